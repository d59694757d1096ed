// Key Vault Premium (HSM-backed keys) for the KeyBroker's key-encryption key: RBAC only, purge
// protection, private endpoint only. The KeyBroker keeps data keys wrapped under this key; its
// identity may wrap and unwrap with this one key and do nothing else in the vault.

param location string
param tags object

@description('Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param vaultName string

@description('Name of the key-encryption key.')
param keyEncryptionKeyName string

@description('Size of the RSA-HSM key-encryption key.')
@allowed([
  3072
  4096
])
param keyEncryptionKeySize int

@description('Principal ids that may wrap and unwrap with the key-encryption key (the KeyBroker).')
param wrapPrincipalIds array

@description('Also grant Key Vault secure key release on this vault\'s keys to those principals (only for exportable keys with a release policy; the KeyBroker\'s own release needs only wrap/unwrap).')
param grantKeyRelease bool

param vnetId string
param privateEndpointsSubnetId string

// Built-in roles: get/wrap/unwrap on keys, and secure key release.
var cryptoServiceEncryptionUser = 'e147488a-f6f5-4113-8e2d-b22465e65bf6'
var cryptoServiceReleaseUser = '08bbd89e-9f13-488c-ac41-acfcb10c90ab'

resource vault 'Microsoft.KeyVault/vaults@2025-05-01' = {
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'premium'
    }
    enableRbacAuthorization: true
    enablePurgeProtection: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
  }
}

resource kek 'Microsoft.KeyVault/vaults/keys@2025-05-01' = {
  parent: vault
  name: keyEncryptionKeyName
  tags: tags
  properties: {
    kty: 'RSA-HSM'
    keySize: keyEncryptionKeySize
    keyOps: [
      'wrapKey'
      'unwrapKey'
    ]
    attributes: {
      enabled: true
      exportable: false
    }
    rotationPolicy: {
      attributes: {
        expiryTime: 'P2Y'
      }
      lifetimeActions: [
        {
          action: {
            type: 'notify'
          }
          trigger: {
            timeBeforeExpiry: 'P30D'
          }
        }
      ]
    }
  }
}

resource wrapAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in wrapPrincipalIds: {
    name: guid(kek.id, principalId, cryptoServiceEncryptionUser)
    scope: kek
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cryptoServiceEncryptionUser)
      description: 'MriSeg KeyBroker: wrap/unwrap with the key-encryption key'
    }
  }
]

resource releaseAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in (grantKeyRelease ? wrapPrincipalIds : []): {
    name: guid(vault.id, principalId, cryptoServiceReleaseUser)
    scope: vault
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cryptoServiceReleaseUser)
      description: 'MriSeg KeyBroker: secure key release of exportable keys'
    }
  }
]

module vaultZone 'private-dns-zone.bicep' = {
  name: 'dns-vault'
  params: {
    zoneName: 'privatelink.vaultcore.azure.net'
    vnetId: vnetId
    tags: tags
  }
}

module vaultEndpoint 'private-endpoint.bicep' = {
  name: 'pe-vault'
  params: {
    name: '${vaultName}-pe'
    location: location
    tags: tags
    targetResourceId: vault.id
    groupId: 'vault'
    subnetId: privateEndpointsSubnetId
    dnsZoneId: vaultZone.outputs.zoneId
  }
}

output vaultName string = vault.name
output vaultUri string = vault.properties.vaultUri
output keyEncryptionKeyName string = kek.name
output keyEncryptionKeyUri string = kek.properties.keyUri
