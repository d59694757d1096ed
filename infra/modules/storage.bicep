// Blob + Table storage for every party, reached only through private endpoints and only with Entra ID
// (no shared keys). Each service's identity gets Reader or Contributor on exactly the containers and
// tables it works with (services.json), plus a custom role that may only list container and table
// names, which the services' health checks need.

param location string
param tags object

@description('Storage account name (3-24 lower-case letters and digits).')
@minLength(3)
@maxLength(24)
param accountName string

@description('Redundancy, e.g. Standard_LRS, Standard_ZRS, Standard_GRS.')
param skuName string

@description('Blob containers to create.')
param containerNames array

@description('Tables to create (letters and digits only).')
param tableNames array

@description('[{ service, container, access: read|write }]: who may use which container.')
param blobGrants array

@description('[{ service, table, access: read|write }]: who may use which table.')
param tableGrants array

@description('Services whose health checks list containers and tables: they get the list-only role.')
param probingServices array

@description('Principal id of each service\'s managed identity: { preprocess: \'<guid>\', ... }.')
param principalIds object

param vnetId string
param privateEndpointsSubnetId string

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var blobRoles = {
  read: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
  write: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
}
var tableRoles = {
  read: '76199698-9eea-4c19-bc75-cec21354c6b6' // Storage Table Data Reader
  write: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
}

resource account 'Microsoft.Storage/storageAccounts@2025-06-01' = {
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'None'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-06-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-06-01' = [
  for name in containerNames: {
    parent: blobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2025-06-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-06-01' = [
  for name in tableNames: {
    parent: tableService
    name: name
  }
]

resource blobAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for grant in blobGrants: {
    name: guid(containers[indexOf(containerNames, grant.container)].id, grant.service, blobRoles[grant.access])
    scope: containers[indexOf(containerNames, grant.container)]
    properties: {
      principalId: principalIds[grant.service]
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobRoles[grant.access])
      description: 'MriSeg ${grant.service}: ${grant.access} ${grant.container}'
    }
  }
]

resource tableAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for grant in tableGrants: {
    name: guid(tables[indexOf(tableNames, grant.table)].id, grant.service, tableRoles[grant.access])
    scope: tables[indexOf(tableNames, grant.table)]
    properties: {
      principalId: principalIds[grant.service]
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tableRoles[grant.access])
      description: 'MriSeg ${grant.service}: ${grant.access} table ${grant.table}'
    }
  }
]

// Listing container and table names (not their contents): what the services' storage health checks do.
resource prober 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'mriseg-storage-prober')
  properties: {
    roleName: 'MriSeg storage prober (${resourceGroup().name})'
    description: 'Lists blob containers and tables of the MriSeg storage account; reads no data.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/read'
          'Microsoft.Storage/storageAccounts/tableServices/tables/read'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource proberAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for service in probingServices: {
    name: guid(account.id, service, prober.id)
    scope: account
    properties: {
      principalId: principalIds[service]
      principalType: 'ServicePrincipal'
      roleDefinitionId: prober.id
      description: 'MriSeg ${service}: storage health check (list names only)'
    }
  }
]

// Private endpoints: the account is reachable from the virtual network only.
module blobZone 'private-dns-zone.bicep' = {
  name: 'dns-blob'
  params: {
    zoneName: 'privatelink.blob.${environment().suffixes.storage}'
    vnetId: vnetId
    tags: tags
  }
}

module tableZone 'private-dns-zone.bicep' = {
  name: 'dns-table'
  params: {
    zoneName: 'privatelink.table.${environment().suffixes.storage}'
    vnetId: vnetId
    tags: tags
  }
}

module blobEndpoint 'private-endpoint.bicep' = {
  name: 'pe-blob'
  params: {
    name: '${accountName}-blob-pe'
    location: location
    tags: tags
    targetResourceId: account.id
    groupId: 'blob'
    subnetId: privateEndpointsSubnetId
    dnsZoneId: blobZone.outputs.zoneId
  }
}

module tableEndpoint 'private-endpoint.bicep' = {
  name: 'pe-table'
  params: {
    name: '${accountName}-table-pe'
    location: location
    tags: tags
    targetResourceId: account.id
    groupId: 'table'
    subnetId: privateEndpointsSubnetId
    dnsZoneId: tableZone.outputs.zoneId
  }
}

output accountName string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
