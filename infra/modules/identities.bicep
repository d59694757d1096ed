// One user-assigned managed identity per service: each gets only the roles its own work needs.

param location string
param tags object

@description('Service names; the identities are named id-<service>.')
param services array

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = [
  for service in services: {
    name: 'id-${service}'
    location: location
    tags: union(tags, { 'mriseg-service': service })
  }
]

@description('Per service (in the order given): its identity\'s resource id, principal id and client id.')
output identities array = [
  for (service, i) in services: {
    service: service
    id: identity[i].id
    principalId: identity[i].properties.principalId
    clientId: identity[i].properties.clientId
  }
]
