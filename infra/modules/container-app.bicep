// One MriSeg gRPC service as a container app: internal ingress only, cleartext HTTP/2 for gRPC on its
// gRPC port, its HTTP/1.1 port (health) as an additional internal port, probes on /alive and /health,
// its own user-assigned identity for storage, Key Vault and the registry.

param location string
param tags object
param environmentId string

@description('Service name: the container app\'s name, its azd service name and its DNS name in the environment.')
param name string

@description('Image; azd sets it on deploy. Until then a placeholder (which does not answer the probes).')
param image string

@description('The service identity\'s resource id.')
param identityId string

@description('Registry login server the identity pulls from.')
param registryServer string

@description('Kestrel endpoint "grpc" (HTTP/2 only).')
param grpcPort int

@description('Kestrel endpoint "http" (HTTP/1.1: /health, /alive).')
param httpPort int

@description('Environment variables: [{ name, value }]. The services hold no secrets: they authenticate with their identity.')
param env array

param cpu string
param memory string
param minReplicas int
param maxReplicas int

var placeholderImage = 'mcr.microsoft.com/azuredocs/containerapps-helloworld:latest'

resource app 'Microsoft.App/containerApps@2025-07-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': name, 'mriseg-service': name })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: false
        targetPort: grpcPort
        transport: 'http2'
        // Cleartext HTTP/2 inside the private environment; the environment has no public ingress.
        allowInsecure: true
        additionalPortMappings: [
          {
            external: false
            targetPort: httpPort
            exposedPort: httpPort
          }
        ]
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: name
          image: empty(image) ? placeholderImage : image
          env: env
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/alive'
                port: httpPort
              }
              periodSeconds: 10
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/health'
                port: httpPort
              }
              periodSeconds: 10
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
      }
    }
  }
}

output name string = app.name
output fqdn string = app.properties.configuration.ingress.fqdn
