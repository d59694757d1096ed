// The Trainer: the only workload on an Azure confidential VM with an NVIDIA H100 in confidential-
// computing mode (NCCadsH100v5). AMD SEV-SNP isolates the VM's memory from the host and the operator;
// Secure Boot and the vTPM give a measured boot that Microsoft Azure Attestation reports on; the OS
// disk is encrypted with a key bound to the VM's vTPM (confidential OS disk encryption). No public IP,
// no VM extensions (so no Run Command), SSH off by default.

param location string
param tags object

@description('VM name (also its computer name).')
param vmName string

@description('A confidential GPU size, e.g. Standard_NCC40ads_H100_v5.')
param vmSize string

@description('Marketplace image of a confidential-VM-capable OS: { publisher, offer, sku, version }.')
param imageReference object

param subnetId string
param identityId string
param identityClientId string

param adminUsername string

@description('SSH public key. Azure requires one for a Linux VM; it is only usable when allowSsh is true.')
param adminSshPublicKey string

@description('Keep sshd running (for debugging only: an operator shell defeats the clean room).')
param allowSsh bool

@description('Optional disk encryption set (type ConfidentialVmEncryptedWithCustomerKey) for a customer-managed key; empty for a platform-managed key.')
param diskEncryptionSetId string

@description('Trainer image, by digest (<registry>/mriseg/trainer@sha256:...).')
param trainerImage string

param registryServer string

@description('The Trainer\'s environment: [{ name, value }].')
param trainerEnv array

param grpcPort int
param httpPort int

@description('NVIDIA driver branch whose signed open kernel modules are installed, e.g. 570.')
param nvidiaDriverBranch string

@description('OS disk size in GB.')
param osDiskSizeGB int

var envLines = join(map(trainerEnv, e => '      ${e.name}=${e.value}'), '\n')
var cloudInit = reduce(
  items({
    '{{TRAINER_ENV}}': envLines
    '{{TRAINER_IMAGE}}': trainerImage
    '{{REGISTRY_SERVER}}': registryServer
    '{{IDENTITY_CLIENT_ID}}': identityClientId
    '{{NVIDIA_DRIVER_BRANCH}}': nvidiaDriverBranch
    '{{GRPC_PORT}}': string(grpcPort)
    '{{HTTP_PORT}}': string(httpPort)
    '{{SSH_COMMAND}}': allowSsh ? 'true' : 'systemctl disable --now ssh.socket ssh.service || true'
  }),
  loadTextContent('../trainer/cloud-init.yaml'),
  (text, placeholder) => replace(string(text), placeholder.key, placeholder.value)
)

resource nic 'Microsoft.Network/networkInterfaces@2025-05-01' = {
  name: '${vmName}-nic'
  location: location
  tags: tags
  properties: {
    enableAcceleratedNetworking: true
    ipConfigurations: [
      {
        name: 'ipconfig1'
        properties: {
          privateIPAllocationMethod: 'Dynamic'
          subnet: {
            id: subnetId
          }
        }
      }
    ]
  }
}

resource vm 'Microsoft.Compute/virtualMachines@2025-04-01' = {
  name: vmName
  location: location
  tags: union(tags, { 'mriseg-service': vmName })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    hardwareProfile: {
      vmSize: vmSize
    }
    securityProfile: {
      securityType: 'ConfidentialVM'
      uefiSettings: {
        secureBootEnabled: true
        vTpmEnabled: true
      }
    }
    storageProfile: {
      imageReference: imageReference
      osDisk: {
        name: '${vmName}-osdisk'
        createOption: 'FromImage'
        deleteOption: 'Delete'
        diskSizeGB: osDiskSizeGB
        managedDisk: {
          storageAccountType: 'Premium_LRS'
          securityProfile: {
            // Confidential OS disk encryption: the disk key is sealed to this VM's vTPM.
            securityEncryptionType: 'DiskWithVMGuestState'
            diskEncryptionSet: empty(diskEncryptionSetId) ? null : { id: diskEncryptionSetId }
          }
        }
      }
    }
    osProfile: {
      computerName: vmName
      adminUsername: adminUsername
      customData: base64(cloudInit)
      allowExtensionOperations: false
      linuxConfiguration: {
        disablePasswordAuthentication: true
        ssh: {
          publicKeys: [
            {
              path: '/home/${adminUsername}/.ssh/authorized_keys'
              keyData: adminSshPublicKey
            }
          ]
        }
      }
    }
    networkProfile: {
      networkInterfaces: [
        {
          id: nic.id
          properties: {
            deleteOption: 'Delete'
          }
        }
      ]
    }
    diagnosticsProfile: {
      bootDiagnostics: {
        // The serial log is readable by anyone with access to the VM resource: off in a clean room.
        enabled: false
      }
    }
  }
}

output vmName string = vm.name
output privateIp string = nic.properties.ipConfigurations[0].properties.privateIPAddress
