// An OpenTelemetry Collector in the Container Apps environment: the services and the Trainer VM send
// OTLP over HTTP (internal ingress only), the collector forwards to Application Insights.

param location string
param tags object
param environmentId string

@description('Collector image (the contrib distribution carries the azuremonitor exporter).')
param image string

@secure()
param appInsightsConnectionString string

resource collector 'Microsoft.App/containerApps@2025-07-01' = {
  name: 'otel-collector'
  location: location
  tags: tags
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: false
        targetPort: 4318
        transport: 'http'
        allowInsecure: true
      }
      secrets: [
        {
          name: 'appinsights-connection-string'
          value: appInsightsConnectionString
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'otel-collector'
          image: image
          args: [
            '--config=env:OTEL_COLLECTOR_CONFIG'
          ]
          env: [
            {
              name: 'OTEL_COLLECTOR_CONFIG'
              value: loadTextContent('../otel-collector.yaml')
            }
            {
              name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
              secretRef: 'appinsights-connection-string'
            }
          ]
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/'
                port: 13133
              }
            }
          ]
        }
      ]
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
    }
  }
}

@description('OTLP/HTTP base address inside the environment.')
output internalEndpoint string = 'http://${collector.name}'

@description('OTLP/HTTP base address from the virtual network (TLS at the environment\'s ingress).')
output vnetEndpoint string = 'https://${collector.properties.configuration.ingress.fqdn}'
