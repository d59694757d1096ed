using MriSeg.ServiceDefaults;
using MriSeg.Trainer;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();
builder.Services.AddSingleton<TorchHealthCheck>();
builder.Services.AddHostedService(services => services.GetRequiredService<TorchHealthCheck>());
builder.Services.AddHealthChecks().AddCheck<TorchHealthCheck>("torch", tags: [ServiceDefaultsExtensions.ReadyTag]);
var settings = TrainerSettings.From(builder.Configuration);
builder.Services.AddSingleton(settings);
builder.Services.AddGrpcClient<MriSeg.Contracts.V1.KeyBroker.KeyBrokerClient>(options => options.Address = new Uri(settings.KeyBrokerAddress));
builder.Services.AddHttpClient();
builder.Services.AddSingleton<CleanRoomIdentity>();
builder.Services.AddHostedService<CleanRoomRegistration>();
builder.Services.AddSingleton<RunStore>();
builder.Services.AddSingleton<ICleanRoomRunFactory, CleanRoomRunFactory>();
builder.Services.AddSingleton<RunManager>();
builder.Services.AddHostedService(services => services.GetRequiredService<RunManager>());

var app = builder.Build();
app.MapGrpcHosting<TrainerService>();
app.Run();
