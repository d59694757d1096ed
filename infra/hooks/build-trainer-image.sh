#!/bin/sh
# azd postdeploy hook: builds the Trainer image in the registry (an ACR task: no local Docker needed),
# records its digest as TRAINER_IMAGE, and says to run `azd provision` so that the confidential VM is
# created (or re-created) with exactly that image. Needs the Azure CLI, logged in.
set -eu
registry="${AZURE_CONTAINER_REGISTRY_NAME:?run azd provision first}"
server="${AZURE_CONTAINER_REGISTRY_ENDPOINT:?run azd provision first}"
tag="$(git rev-parse --short HEAD 2>/dev/null || date +%Y%m%d%H%M%S)"

echo "Building mriseg/trainer:${tag} in ${registry} (services/Trainer/Dockerfile)..."
az acr build --registry "${registry}" --image "mriseg/trainer:${tag}" --file services/Trainer/Dockerfile .

digest="$(az acr repository show --name "${registry}" --image "mriseg/trainer:${tag}" --query digest -o tsv)"
image="${server}/mriseg/trainer@${digest}"
current="$(azd env get-value TRAINER_IMAGE 2>/dev/null || true)"
azd env set TRAINER_IMAGE "${image}"
if [ "${current}" != "${image}" ]; then
  echo "TRAINER_IMAGE=${image}"
  echo "Run 'azd provision' to deploy the Trainer VM with this image (its digest belongs in the key release policies)."
fi
