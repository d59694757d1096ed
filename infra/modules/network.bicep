// The virtual network: a subnet for the Container Apps environment, one for the Trainer's
// confidential VM alone, and one for the private endpoints of Storage and Key Vault.

param location string
param vnetName string
param tags object

@description('Address space of the virtual network, e.g. 10.40.0.0/16.')
param addressPrefix string

@description('Container Apps environment subnet (a workload-profiles environment needs at least a /27; a /23 leaves room to scale).')
param appsSubnetPrefix string

@description('The Trainer VM subnet.')
param trainerSubnetPrefix string

@description('Private endpoints subnet.')
param privateEndpointsSubnetPrefix string

@description('Ports of the Trainer (gRPC, HTTP health) that the Container Apps subnet may reach.')
param trainerPorts array

@description('Let SSH (22) in to the Trainer VM from inside the virtual network. Off by default: an operator shell inside the clean room is what the deployment is meant to rule out.')
param allowTrainerSsh bool

var sshRule = allowTrainerSsh
  ? [
      {
        name: 'allow-ssh-from-vnet'
        properties: {
          priority: 200
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: trainerSubnetPrefix
          destinationPortRange: '22'
        }
      }
    ]
  : []

resource trainerNsg 'Microsoft.Network/networkSecurityGroups@2025-05-01' = {
  name: '${vnetName}-trainer-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: concat(
      [
        {
          name: 'allow-trainer-grpc-from-vnet'
          properties: {
            priority: 100
            direction: 'Inbound'
            access: 'Allow'
            protocol: 'Tcp'
            sourceAddressPrefix: 'VirtualNetwork'
            sourcePortRange: '*'
            destinationAddressPrefix: trainerSubnetPrefix
            destinationPortRanges: map(trainerPorts, port => string(port))
          }
        }
        {
          name: 'deny-all-other-inbound'
          properties: {
            priority: 4000
            direction: 'Inbound'
            access: 'Deny'
            protocol: '*'
            sourceAddressPrefix: '*'
            sourcePortRange: '*'
            destinationAddressPrefix: '*'
            destinationPortRange: '*'
          }
        }
      ],
      sshRule
    )
  }
}

resource privateEndpointsNsg 'Microsoft.Network/networkSecurityGroups@2025-05-01' = {
  name: '${vnetName}-pe-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-https-from-vnet'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: privateEndpointsSubnetPrefix
          destinationPortRange: '443'
        }
      }
      {
        name: 'deny-all-other-inbound'
        properties: {
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

// Outbound for the Trainer VM (image pull from the registry, packages at first boot, Microsoft Azure
// Attestation): new subnets get no default outbound access.
resource natIp 'Microsoft.Network/publicIPAddresses@2025-05-01' = {
  name: '${vnetName}-nat-ip'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}

resource nat 'Microsoft.Network/natGateways@2025-05-01' = {
  name: '${vnetName}-nat'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIpAddresses: [
      {
        id: natIp.id
      }
    ]
    idleTimeoutInMinutes: 4
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2025-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          delegations: [
            {
              name: 'containerapps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          defaultOutboundAccess: false
          natGateway: {
            id: nat.id
          }
        }
      }
      {
        name: 'trainer'
        properties: {
          addressPrefix: trainerSubnetPrefix
          networkSecurityGroup: {
            id: trainerNsg.id
          }
          natGateway: {
            id: nat.id
          }
          defaultOutboundAccess: false
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointsSubnetPrefix
          networkSecurityGroup: {
            id: privateEndpointsNsg.id
          }
          privateEndpointNetworkPolicies: 'Enabled'
          defaultOutboundAccess: false
        }
      }
    ]
  }
}

output vnetId string = vnet.id
output appsSubnetId string = vnet.properties.subnets[0].id
output trainerSubnetId string = vnet.properties.subnets[1].id
output privateEndpointsSubnetId string = vnet.properties.subnets[2].id
