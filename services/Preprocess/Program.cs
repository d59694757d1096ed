using MriSeg.ServiceDefaults;
using MriSeg.Preprocess;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();
builder.Services.AddSingleton(services => PreprocessSettings.From(builder.Configuration, builder.Environment));

var app = builder.Build();
app.MapGrpcHosting<PreprocessService>();
app.Run();
