#!/bin/sh
# azd postprovision hook: creates the KeyBroker's key-encryption key (KEK) once, a Key Vault secret holding 32
# random bytes in base64, if the vault has none; an existing secret is left as it is (a new value would be a
# rotation: README, "The KeyBroker"). The vault takes no public traffic, so the secret is written through Azure
# Resource Manager (the management plane: Contributor on the resource group suffices, no Key Vault data role), as
# a Bicep template would, but its value never passes through a template, a deployment's history, the azd
# environment or a command line: it goes from /dev/urandom to a 0600 temporary file, deleted on exit.
# With --rotate (an operator, not the hook: `eval "$(azd env get-values)" && sh infra/hooks/create-keybroker-kek.sh --rotate`)
# it adds a new version to an existing secret: the KeyBroker wraps new material under it from its next start and
# keeps reading older material with the versions it names, so never disable or delete an older version.
# Needs the Azure CLI, logged in.
set -eu
rotate=false
if [ "${1:-}" = "--rotate" ]; then
  rotate=true
fi
subscription="${AZURE_SUBSCRIPTION_ID:?run azd provision first}"
group="${AZURE_RESOURCE_GROUP:?run azd provision first}"
vault="${AZURE_KEY_VAULT_NAME:?run azd provision first}"
name="${KEYBROKER_KEK_SECRET_NAME:-mriseg-keybroker-kek}"
url="https://management.azure.com/subscriptions/${subscription}/resourceGroups/${group}/providers/Microsoft.KeyVault/vaults/${vault}/secrets/${name}?api-version=2025-05-01"

if answer="$(az rest --method get --url "${url}" --only-show-errors 2>&1)"; then
  if [ "${rotate}" != true ]; then
    echo "KeyBroker key-encryption key: secret ${name} exists in ${vault}; left as it is."
    exit 0
  fi
else
  case "${answer}" in
    *NotFound* | *"Not Found"*) ;;
    *)
      echo "Cannot tell whether ${vault} has the secret ${name}: ${answer}" >&2
      exit 1
      ;;
  esac
  if [ "${rotate}" = true ]; then
    echo "KeyBroker key-encryption key: ${vault} has no secret ${name} to rotate." >&2
    exit 1
  fi
fi

umask 077
body="$(mktemp)"
trap 'rm -f "${body}"' EXIT
trap 'exit 1' INT TERM
# printf is a shell builtin: the value is in no process's arguments.
printf '{"properties":{"contentType":"application/vnd.mriseg.kek;encoding=base64;bits=256","value":"%s"}}' \
  "$(head -c 32 /dev/urandom | base64 | tr -d '\n')" > "${body}"
az rest --method put --url "${url}" --body "@${body}" --only-show-errors > /dev/null
if [ "${rotate}" = true ]; then
  echo "KeyBroker key-encryption key: added a new version of ${name} in ${vault}; restart the KeyBroker to wrap under it."
else
  echo "KeyBroker key-encryption key: created secret ${name} in ${vault} (256 random bits)."
fi
