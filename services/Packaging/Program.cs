using MriSeg.ServiceDefaults;
using MriSeg.Packaging;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var app = builder.Build();
app.MapGrpcHosting<PackagingService>();
app.Run();
