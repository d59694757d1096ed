using MriSeg.ServiceDefaults;
using MriSeg.Trainer;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var app = builder.Build();
app.MapGrpcHosting<TrainerService>();
app.Run();
