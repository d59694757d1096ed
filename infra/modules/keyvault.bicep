// Key Vault Premium for the KeyBroker's key-encryption key (KEK): RBAC only, purge protection, private endpoint
// only. The KEK is a secret holding a base64 256-bit key (Azure.Security.KeyVault.Secrets); the KeyBroker reads it,
// by version, with its managed identity, and keeps everything else it must not lose wrapped under it in its tables.
// No template carries the secret's value: the postprovision hook (infra/hooks/create-keybroker-kek.sh) creates it once
// through Azure Resource Manager, or the KeyBroker does at its first start where kekCreatorPrincipalIds allows.
// The secret may not exist when this deploys, so the roles are on the vault, which holds nothing else.

param location string
param tags object

@description('Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param vaultName string

@description('Name of the secret holding the key-encryption key.')
param kekSecretName string

@description('Principal ids that read the key-encryption key secret (the KeyBroker): Key Vault Secrets User.')
param kekReaderPrincipalIds array

@description('Principal ids that may also create it (KeyBroker:Kek:Create): Key Vault Secrets Officer. Empty unless the KeyBroker creates its own KEK.')
param kekCreatorPrincipalIds array

@description('Also grant Key Vault secure key release on this vault\'s keys to the readers (only for exportable keys with a release policy; the KeyBroker\'s own KEK needs none).')
param grantKeyRelease bool

param vnetId string
param privateEndpointsSubnetId string

// Built-in roles: read secrets; read, set and delete secrets; secure key release.
var secretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var secretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
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

resource readerAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in kekReaderPrincipalIds: {
    name: guid(vault.id, principalId, secretsUser)
    scope: vault
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUser)
      description: 'MriSeg KeyBroker: read the key-encryption key secret ${kekSecretName} (by version)'
    }
  }
]

resource creatorAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in kekCreatorPrincipalIds: {
    name: guid(vault.id, principalId, secretsOfficer)
    scope: vault
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsOfficer)
      description: 'MriSeg KeyBroker: create the key-encryption key secret ${kekSecretName} at first start (remove once it exists)'
    }
  }
]

resource releaseAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in (grantKeyRelease ? kekReaderPrincipalIds : []): {
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
output kekSecretName string = kekSecretName
