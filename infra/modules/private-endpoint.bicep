// A private endpoint for one sub-resource (blob, table, vault) of a resource, registered in its
// privatelink DNS zone, so the services reach it from the virtual network only.

param location string
param tags object

@description('Name of the private endpoint.')
param name string

@description('Resource the endpoint connects to.')
param targetResourceId string

@description('Sub-resource: blob, table, vault, ...')
param groupId string

param subnetId string

@description('The privatelink DNS zone of that sub-resource.')
param dnsZoneId string

resource endpoint 'Microsoft.Network/privateEndpoints@2025-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: name
        properties: {
          privateLinkServiceId: targetResourceId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource zoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2025-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: groupId
        properties: {
          privateDnsZoneId: dnsZoneId
        }
      }
    ]
  }
}
