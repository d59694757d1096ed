using MriSeg.ServiceDefaults;
using MriSeg.KeyBroker;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var app = builder.Build();
app.MapGrpcHosting<KeyBrokerService>();
app.Run();
