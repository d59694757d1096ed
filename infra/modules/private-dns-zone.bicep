// A private DNS zone linked to the virtual network, optionally with A records.

@description('Zone name, e.g. privatelink.blob.core.windows.net or a Container Apps environment\'s default domain.')
param zoneName string

param vnetId string
param tags object

@description('A records: [{ name: \'*\', ipv4Address: \'10.40.0.4\' }].')
param aRecords array = []

resource zone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: zoneName
  location: 'global'
  tags: tags
}

resource link 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: zone
  name: 'vnet-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource records 'Microsoft.Network/privateDnsZones/A@2024-06-01' = [
  for record in aRecords: {
    parent: zone
    name: record.name
    properties: {
      ttl: 300
      aRecords: [
        {
          ipv4Address: record.ipv4Address
        }
      ]
    }
  }
]

output zoneId string = zone.id
