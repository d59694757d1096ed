using MriSeg.ServiceDefaults;
using MriSeg.ModelVault;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var app = builder.Build();
app.MapGrpcHosting<ModelVaultService>();
app.Run();
