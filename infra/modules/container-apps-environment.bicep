// The Container Apps environment of Preprocess, Packaging, KeyBroker and ModelVault: inside the virtual
// network, internal only (no public ingress), console logs to Log Analytics. (OpenTelemetry goes to
// the collector app, otel-collector.bicep: the environment's managed OpenTelemetry agent exists only
// in preview API versions.) A private DNS zone makes the apps' names resolve inside the network, for
// the Trainer VM.

param location string
param tags object
param environmentName string

@description('Subnet delegated to Microsoft.App/environments.')
param infrastructureSubnetId string

param vnetId string
param logAnalyticsWorkspaceName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' existing = {
  name: logAnalyticsWorkspaceName
}

resource environment 'Microsoft.App/managedEnvironments@2025-07-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    vnetConfiguration: {
      infrastructureSubnetId: infrastructureSubnetId
      internal: true
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    zoneRedundant: false
  }
}

module dns 'private-dns-zone.bicep' = {
  name: 'dns-apps'
  params: {
    zoneName: environment.properties.defaultDomain
    vnetId: vnetId
    tags: tags
    aRecords: [
      {
        name: '*'
        ipv4Address: environment.properties.staticIp
      }
    ]
  }
}

output environmentId string = environment.id
output environmentName string = environment.name
output defaultDomain string = environment.properties.defaultDomain
output staticIp string = environment.properties.staticIp
