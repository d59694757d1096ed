// MriSeg on Azure: `azd up` deploys this (subscription scope: it creates the resource group).
//
//   network      VNet: Container Apps subnet, the Trainer's own subnet, private endpoints subnet
//   monitoring   Log Analytics + Application Insights (OpenTelemetry through the collector app)
//   identities   one user-assigned managed identity per service
//   storage      Blob + Table, per-party containers, Entra ID only, private endpoints, per-container roles
//   keyvault     Key Vault Premium: the KeyBroker's key-encryption key (a secret), readable by the KeyBroker only
//   registry     the images
//   apps         Preprocess, Packaging, KeyBroker, ModelVault in an internal Container Apps environment
//   trainer      the Trainer alone on a confidential H100 VM (SEV-SNP, Secure Boot, vTPM, CVM disk encryption)
//
// The services and what each may touch are in services.json (also checked against the AppHost's manifest).

targetScope = 'subscription'

// ----- where and what -----------------------------------------------------------------------------

@minLength(1)
@maxLength(40)
@description('Name of the azd environment: the resource group is rg-<name>; resource names derive from it.')
param environmentName string

@minLength(1)
@description('Region of every resource. It must offer the Trainer VM size and you need quota for it (README: Deploying to Azure).')
param location string

@maxLength(10)
@description('Prefix of resource names: lower-case letters and digits.')
param namePrefix string = 'mriseg'

@description('Data providers: each gets its own blob container provider-<name> (lower-case letters, digits, hyphens).')
param providers array = [
  'hospital-a'
  'hospital-b'
  'hospital-c'
]

@description('Address space of the virtual network (a /16 is split into the subnets).')
param vnetAddressPrefix string = '10.40.0.0/16'

// ----- sizes and SKUs -----------------------------------------------------------------------------

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_LRS'

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Basic'

@description('vCPUs of each service container (a Consumption pair with serviceMemory: 0.5/1Gi, 1.0/2Gi, 2.0/4Gi).')
param serviceCpu string = '1.0'

param serviceMemory string = '2Gi'

@minValue(0)
param serviceMinReplicas int = 1

@minValue(1)
param serviceMaxReplicas int = 3

@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// ----- images ---------------------------------------------------------------------------------------

@description('Images azd deployed (azd fills SERVICE_<NAME>_IMAGE_NAME); empty means a placeholder until the first azd deploy.')
param preprocessImage string = ''
param packagingImage string = ''
param keybrokerImage string = ''
param modelvaultImage string = ''

@description('OpenTelemetry Collector image (contrib: it has the Azure Monitor exporter).')
param otelCollectorImage string = 'otel/opentelemetry-collector-contrib:0.139.0'

// ----- the Trainer's confidential GPU VM ------------------------------------------------------------

@description('Confidential GPU VM size (NCCadsH100v5: one H100 in confidential-computing mode).')
param trainerVmSize string = 'Standard_NCC40ads_H100_v5'

@description('OS image of the Trainer VM: a confidential-VM image.')
param trainerImageReference object = {
  publisher: 'Canonical'
  offer: 'ubuntu-24_04-lts'
  sku: 'cvm'
  version: 'latest'
}

@description('Trainer container image by digest (<registry>/mriseg/trainer@sha256:...). Empty: the VM is not deployed yet (infra/hooks/build-trainer-image.sh sets it).')
param trainerImage string = ''

param trainerAdminUsername string = 'mriseg'

@description('SSH public key for the Trainer VM (Azure requires one; it is usable only with allowTrainerSsh). Needed once trainerImage is set.')
param trainerAdminSshPublicKey string = ''

@description('Allow SSH to the Trainer VM from inside the network. For debugging only: it lets an operator into the clean room.')
param allowTrainerSsh bool = false

@description('Optional disk encryption set (ConfidentialVmEncryptedWithCustomerKey) for a customer-managed OS disk key.')
param trainerDiskEncryptionSetId string = ''

@minValue(64)
param trainerOsDiskSizeGB int = 256

@description('NVIDIA driver branch whose signed open kernel modules the Trainer VM installs.')
param nvidiaDriverBranch string = '570'

// ----- keys and attestation -------------------------------------------------------------------------

@description('Also give the KeyBroker Key Vault secure key release (only for exportable keys with a release policy).')
param keyBrokerCanReleaseKeys bool = false

@description('Key Vault secret holding the KeyBroker\'s key-encryption key, a base64 256-bit key. The postprovision hook (infra/hooks/create-keybroker-kek.sh) creates it once.')
@minLength(1)
@maxLength(127)
param keyBrokerKekSecretName string = 'mriseg-keybroker-kek'

@description('Let the KeyBroker create a missing key-encryption key secret at its first start (KeyBroker:Kek:Create): its identity then also gets Key Vault Secrets Officer on the vault. Off: the hook or an operator creates the secret, and the KeyBroker only reads it.')
param keyBrokerCreatesKek bool = false

@description('Microsoft Azure Attestation endpoint the Trainer attests with and the KeyBroker trusts, e.g. the region\'s shared provider https://shared<region>.<region>.attest.azure.net.')
param attestationEndpoint string = ''

// ----- derived names --------------------------------------------------------------------------------

var tags = {
  'azd-env-name': environmentName
  application: 'mriseg'
}
var token = toLower(uniqueString(subscription().id, environmentName, location))
var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')

// ----- the services (services.json) -----------------------------------------------------------------

var catalog = loadJsonContent('services.json')
var serviceNames = objectKeys(catalog.services)
var appServiceNames = filter(serviceNames, s => catalog.services[s].host == 'containerapp')
var trainerName = 'trainer'
var trainer = catalog.services[trainerName]

var containerGroups = {
  providers: map(providers, p => 'provider-${p}')
  consumer: [
    'consumer'
  ]
  outputs: [
    'cleanroom-outputs'
  ]
  checkpoints: [
    'cleanroom-checkpoints'
  ]
}
var containerNames = flatten(map(objectKeys(containerGroups), g => containerGroups[g]))
var blobGrants = flatten(map(
  serviceNames,
  s => flatten(map(items(catalog.services[s].blob), g => map(containerGroups[g.key], c => { service: s, container: c, access: g.value })))
))
var tableNames = flatten(map(serviceNames, s => objectKeys(catalog.services[s].tables)))
var tableGrants = flatten(map(
  serviceNames,
  s => map(items(catalog.services[s].tables), t => { service: s, table: t.key, access: t.value })
))
var kekServices = filter(serviceNames, s => catalog.services[s].keyVault == 'kek')

resource rg 'Microsoft.Resources/resourceGroups@2025-04-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module network 'modules/network.bicep' = {
  name: 'network'
  scope: rg
  params: {
    location: location
    tags: tags
    vnetName: '${prefix}-vnet-${token}'
    addressPrefix: vnetAddressPrefix
    appsSubnetPrefix: cidrSubnet(vnetAddressPrefix, 23, 0)
    trainerSubnetPrefix: cidrSubnet(vnetAddressPrefix, 27, 16)
    privateEndpointsSubnetPrefix: cidrSubnet(vnetAddressPrefix, 27, 17)
    trainerPorts: [
      trainer.grpcPort
      trainer.httpPort
    ]
    allowTrainerSsh: allowTrainerSsh
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    workspaceName: '${prefix}-logs-${token}'
    appInsightsName: '${prefix}-appi-${token}'
    retentionInDays: logRetentionInDays
  }
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    services: serviceNames
  }
}

var identityOf = toObject(identities.outputs.identities, i => i.service)

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    accountName: take('${compactPrefix}st${token}', 24)
    skuName: storageSku
    containerNames: containerNames
    tableNames: tableNames
    blobGrants: blobGrants
    tableGrants: tableGrants
    probingServices: serviceNames
    principalIds: toObject(identities.outputs.identities, i => i.service, i => i.principalId)
    vnetId: network.outputs.vnetId
    privateEndpointsSubnetId: network.outputs.privateEndpointsSubnetId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    vaultName: take('${prefix}-kv-${token}', 24)
    kekSecretName: keyBrokerKekSecretName
    kekReaderPrincipalIds: map(kekServices, s => identityOf[s].principalId)
    kekCreatorPrincipalIds: keyBrokerCreatesKek ? map(kekServices, s => identityOf[s].principalId) : []
    grantKeyRelease: keyBrokerCanReleaseKeys
    vnetId: network.outputs.vnetId
    privateEndpointsSubnetId: network.outputs.privateEndpointsSubnetId
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    location: location
    tags: tags
    registryName: take('${compactPrefix}cr${token}', 50)
    skuName: registrySku
    pullPrincipalIds: map(identities.outputs.identities, i => i.principalId)
  }
}

module appsEnvironment 'modules/container-apps-environment.bicep' = {
  name: 'apps-environment'
  scope: rg
  params: {
    location: location
    tags: tags
    environmentName: '${prefix}-cae-${token}'
    infrastructureSubnetId: network.outputs.appsSubnetId
    vnetId: network.outputs.vnetId
    logAnalyticsWorkspaceName: monitoring.outputs.workspaceName
  }
}

module otelCollector 'modules/otel-collector.bicep' = {
  name: 'otel-collector'
  scope: rg
  params: {
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: otelCollectorImage
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
  }
}

// ----- what every service is told ---------------------------------------------------------------------

var storageEnv = map(items(catalog.storage.connections), c => {
  name: 'ConnectionStrings__${c.key}'
  value: c.value == 'blob' ? storage.outputs.blobEndpoint : storage.outputs.tableEndpoint
})
// The KeyBroker keeps no state on its disk: its key-encryption key is the Key Vault secret, read by version with its
// identity; its other keys (import key pair, record MAC key, development authority key) are in its tables, wrapped
// under that key, created at its first start over empty tables (KeyBroker:CreateKeys; never over existing state).
var keyBrokerKekEnv = [
  {
    name: 'KeyBroker__Kek__Source'
    value: 'keyvault'
  }
  {
    name: 'KeyBroker__Kek__VaultUri'
    value: keyVault.outputs.vaultUri
  }
  {
    name: 'KeyBroker__Kek__SecretName'
    value: keyVault.outputs.kekSecretName
  }
  {
    name: 'KeyBroker__Kek__Create'
    value: keyBrokerCreatesKek ? 'true' : 'false'
  }
  {
    name: 'KeyBroker__CreateKeys'
    value: 'true'
  }
]
// The KeyBroker trusts tokens of this Microsoft Azure Attestation issuer (MAA tokens carry no audience: the broker's
// nonce and the bound ephemeral key tie them to the broker and the request); the Trainer attests there, from its
// confidential VM (services/Trainer/AttestationSettings.cs), stating the image digest as its code measurement.
var keyBrokerAttestationEnv = empty(attestationEndpoint)
  ? []
  : [
      {
        name: 'KeyBroker__Attestation__Authorities__0__Issuer'
        value: attestationEndpoint
      }
      {
        name: 'KeyBroker__Attestation__Authorities__0__RequireAudience'
        value: 'false'
      }
    ]
var trainerAttestationEnv = empty(attestationEndpoint)
  ? []
  : [
      {
        name: 'Trainer__Attestation__Provider'
        value: 'maa'
      }
      {
        name: 'Trainer__Attestation__MaaEndpoint'
        value: attestationEndpoint
      }
      {
        name: 'Trainer__Attestation__ExpectedMeasurement'
        value: last(split(trainerImage, '@'))
      }
    ]
var images = {
  preprocess: preprocessImage
  packaging: packagingImage
  keybroker: keybrokerImage
  modelvault: modelvaultImage
}

module apps 'modules/container-app.bicep' = [
  for name in appServiceNames: {
    name: 'app-${name}'
    scope: rg
    params: {
      location: location
      tags: tags
      environmentId: appsEnvironment.outputs.environmentId
      name: name
      image: images[name]
      identityId: identityOf[name].id
      registryServer: registry.outputs.loginServer
      grpcPort: catalog.services[name].grpcPort
      httpPort: catalog.services[name].httpPort
      cpu: serviceCpu
      memory: serviceMemory
      minReplicas: serviceMinReplicas
      maxReplicas: serviceMaxReplicas
      env: concat(
        [
          { name: 'AZURE_CLIENT_ID', value: identityOf[name].clientId }
          { name: 'Kestrel__Endpoints__grpc__Url', value: 'http://+:${catalog.services[name].grpcPort}' }
          { name: 'Kestrel__Endpoints__http__Url', value: 'http://+:${catalog.services[name].httpPort}' }
          { name: 'OTEL_SERVICE_NAME', value: name }
          { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: otelCollector.outputs.internalEndpoint }
          { name: 'OTEL_EXPORTER_OTLP_PROTOCOL', value: 'http/protobuf' }
        ],
        storageEnv,
        // Service discovery inside the environment: an app is reached by its name (cleartext HTTP/2).
        map(catalog.services[name].references, r => { name: 'services__${r}__grpc__0', value: 'http://${r}' }),
        catalog.services[name].keyVault == 'kek' ? concat(keyBrokerKekEnv, keyBrokerAttestationEnv) : []
      )
    }
  }
]

// ----- the Trainer -----------------------------------------------------------------------------------

module trainerVm 'modules/trainer-vm.bicep' = if (!empty(trainerImage)) {
  name: 'trainer-vm'
  scope: rg
  params: {
    location: location
    tags: tags
    vmName: trainerName
    vmSize: trainerVmSize
    imageReference: trainerImageReference
    subnetId: network.outputs.trainerSubnetId
    identityId: identityOf[trainerName].id
    identityClientId: identityOf[trainerName].clientId
    adminUsername: trainerAdminUsername
    adminSshPublicKey: trainerAdminSshPublicKey
    allowSsh: allowTrainerSsh
    diskEncryptionSetId: trainerDiskEncryptionSetId
    trainerImage: trainerImage
    registryServer: registry.outputs.loginServer
    grpcPort: trainer.grpcPort
    httpPort: trainer.httpPort
    nvidiaDriverBranch: nvidiaDriverBranch
    osDiskSizeGB: trainerOsDiskSizeGB
    trainerEnv: concat(
      [
        { name: 'AZURE_CLIENT_ID', value: identityOf[trainerName].clientId }
        { name: 'Kestrel__Endpoints__grpc__Url', value: 'http://+:${trainer.grpcPort}' }
        { name: 'Kestrel__Endpoints__http__Url', value: 'http://+:${trainer.httpPort}' }
        { name: 'OTEL_SERVICE_NAME', value: trainerName }
        { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: otelCollector.outputs.vnetEndpoint }
        { name: 'OTEL_EXPORTER_OTLP_PROTOCOL', value: 'http/protobuf' }
        { name: 'MRISEG_DEVICE', value: 'cuda' }
        { name: 'MRISEG_LIBTORCH_DIR', value: '/opt/torch/lib' }
      ],
      storageEnv,
      // From the VM the apps are reached through the environment's internal load balancer, over TLS.
      map(trainer.references, r => { name: 'services__${r}__grpc__0', value: 'https://${r}.${appsEnvironment.outputs.defaultDomain}' }),
      trainerAttestationEnv
    )
  }
}

// ----- outputs (azd stores them in the environment) -----------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.registryName
output AZURE_CONTAINER_APPS_ENVIRONMENT_ID string = appsEnvironment.outputs.environmentId
output AZURE_CONTAINER_APPS_ENVIRONMENT_DEFAULT_DOMAIN string = appsEnvironment.outputs.defaultDomain
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.accountName
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.vaultName
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.vaultUri
output KEYBROKER_KEK_SECRET_NAME string = keyVault.outputs.kekSecretName
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.workspaceId
output MRISEG_SERVICES array = serviceNames
output MRISEG_CONTAINER_APPS array = [for (name, i) in appServiceNames: { name: name, fqdn: apps[i].outputs.fqdn }]
output TRAINER_PRIVATE_IP string = empty(trainerImage) ? '' : trainerVm!.outputs.privateIp
