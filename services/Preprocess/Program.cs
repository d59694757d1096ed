using MriSeg.ServiceDefaults;
using MriSeg.Preprocess;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var app = builder.Build();
app.MapGrpcHosting<PreprocessService>();
app.Run();
