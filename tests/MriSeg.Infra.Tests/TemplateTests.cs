using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace MriSeg.Infra.Tests;

/// <summary>
/// The compiled templates keep what the clean room relies on: the services of services.json, a
/// confidential VM for the Trainer, storage and Key Vault without shared keys, template-held secrets or public access, internal
/// HTTP/2 ingress. A regression here is a security regression, so each setting is asserted by name.
/// </summary>
public sealed partial class TemplateTests(BicepBuild bicep)
{
    private JsonObject Compiled(string bicepFile)
    {
        bicep.SkipIfUnavailable();
        var path = bicep.CompiledPath(bicepFile);
        Assert.True(File.Exists(path), $"no compiled template for {bicepFile}: {bicep.Build.Describe()}");
        return JsonNode.Parse(File.ReadAllText(path))!.AsObject();
    }

    /// <summary>Resources of a compiled template (an array, or an object in symbolic-name templates).</summary>
    private static IEnumerable<JsonObject> Resources(JsonObject template, string type) =>
        (template["resources"] switch
        {
            JsonArray array => array.Select(r => r!.AsObject()),
            JsonObject map => map.Select(p => p.Value!.AsObject()),
            _ => [],
        }).Where(r => string.Equals(r["type"]?.GetValue<string>(), type, StringComparison.OrdinalIgnoreCase));

    private static JsonObject Single(JsonObject template, string type) =>
        Assert.Single(Resources(template, type));

    private static JsonNode? At(JsonNode node, string path) =>
        path.Split('.').Aggregate((JsonNode?)node, (n, key) => n?[key]);

    private static void AssertValue<T>(T expected, JsonNode node, string path) =>
        Assert.True(At(node, path) is JsonValue v && v.TryGetValue<T>(out var actual) && EqualityComparer<T>.Default.Equals(actual, expected),
            $"{path}: expected {expected}, found {At(node, path)?.ToJsonString() ?? "nothing"}");

    [Fact]
    public void Main_deploys_exactly_the_services_of_services_json()
    {
        var main = Compiled("infra/main.bicep");
        var catalog = ServicesCatalog.Load();
        var variables = main["variables"]!.AsObject();

        // main.bicep: var catalog = loadJsonContent('services.json'), which the compiler inlines.
        var inlined = variables.Where(v => JsonNode.DeepEquals(v.Value, catalog.Json)).Select(v => v.Key).ToList();
        Assert.True(inlined.Count == 1, "services.json is not inlined in the compiled main.bicep");
        Assert.Equal($"[variables('{inlined[0]}')]", variables["catalog"]!.GetValue<string>());
    }

    [Fact]
    public void Azure_yaml_lists_the_container_apps_services_and_nothing_else()
    {
        var catalog = ServicesCatalog.Load();
        var expected = catalog.Services.Where(s => s.Host == "containerapp").Select(s => s.Name).Order().ToList();

        // azure.yaml's "services:" block: "  <name>:" then "    project: <folder>".
        var block = File.ReadAllLines(Infra.InRepository("azure.yaml"))
            .SkipWhile(l => l.TrimEnd() != "services:").Skip(1)
            .TakeWhile(l => l.Length == 0 || l.StartsWith(' ') || l.StartsWith('#'))
            .ToList();
        var projects = new Dictionary<string, string>(StringComparer.Ordinal);
        string? current = null;
        foreach (var line in block)
        {
            if (ServiceKey().Match(line) is { Success: true } service)
            {
                current = service.Groups[1].Value;
                projects[current] = "";
            }
            else if (current is not null && ProjectLine().Match(line) is { Success: true } project)
            {
                projects[current] = project.Groups[1].Value;
            }
        }

        Assert.Equal(expected, projects.Keys.Order().ToList());
        Assert.All(projects, p => Assert.True(
            Directory.Exists(Infra.InRepository(p.Value)) && Directory.EnumerateFiles(Infra.InRepository(p.Value), "*.csproj").Any(),
            $"azure.yaml service {p.Key}: project '{p.Value}' is not a folder with a .csproj"));
    }

    [Fact]
    public void Parameters_file_names_only_parameters_of_main()
    {
        var main = Compiled("infra/main.bicep");
        var declared = main["parameters"]!.AsObject().Select(p => p.Key).ToHashSet(StringComparer.Ordinal);
        var file = JsonNode.Parse(File.ReadAllText(Infra.InRepository("infra/main.parameters.json")))!;
        var named = file["parameters"]!.AsObject().Select(p => p.Key).ToList();
        Assert.NotEmpty(named);
        Assert.All(named, n => Assert.Contains(n, declared));

        var required = main["parameters"]!.AsObject().Where(p => p.Value!["defaultValue"] is null).Select(p => p.Key);
        Assert.All(required, r => Assert.Contains(r, named));
    }

    [Fact]
    public void Trainer_is_a_confidential_vm_with_secure_boot_vtpm_and_confidential_disk_encryption()
    {
        var main = Compiled("infra/main.bicep");
        var size = main["parameters"]!["trainerVmSize"]!["defaultValue"]!.GetValue<string>();
        Assert.Matches("^Standard_NCC\\d+ads_H100_v5$", size);

        var template = Compiled("infra/modules/trainer-vm.bicep");
        var vm = Single(template, "Microsoft.Compute/virtualMachines");
        AssertValue("ConfidentialVM", vm, "properties.securityProfile.securityType");
        AssertValue(true, vm, "properties.securityProfile.uefiSettings.secureBootEnabled");
        AssertValue(true, vm, "properties.securityProfile.uefiSettings.vTpmEnabled");
        AssertValue("DiskWithVMGuestState", vm, "properties.storageProfile.osDisk.managedDisk.securityProfile.securityEncryptionType");
        AssertValue(false, vm, "properties.osProfile.allowExtensionOperations");
        AssertValue(true, vm, "properties.osProfile.linuxConfiguration.disablePasswordAuthentication");

        var nic = Single(template, "Microsoft.Network/networkInterfaces");
        Assert.DoesNotContain("publicIPAddress", nic.ToJsonString(), StringComparison.OrdinalIgnoreCase);
        Assert.Empty(Resources(template, "Microsoft.Network/publicIPAddresses"));
    }

    [Fact]
    public void Trainer_cloud_init_has_every_placeholder_filled_by_the_vm_module()
    {
        var cloudInit = File.ReadAllText(Infra.InRepository("infra/trainer/cloud-init.yaml"));
        var module = File.ReadAllText(Infra.InRepository("infra/modules/trainer-vm.bicep"));
        Assert.StartsWith("#cloud-config\n", cloudInit, StringComparison.Ordinal);
        var placeholders = Placeholder().Matches(cloudInit).Select(m => m.Value).Distinct().ToList();
        Assert.NotEmpty(placeholders);
        Assert.All(placeholders, p => Assert.Contains($"'{p}':", module, StringComparison.Ordinal));
    }

    [Fact]
    public void Storage_takes_no_shared_keys_and_no_public_traffic()
    {
        var template = Compiled("infra/modules/storage.bicep");
        var account = Single(template, "Microsoft.Storage/storageAccounts");
        AssertValue(false, account, "properties.allowSharedKeyAccess");
        AssertValue(false, account, "properties.allowBlobPublicAccess");
        AssertValue("Disabled", account, "properties.publicNetworkAccess");
        AssertValue("TLS1_2", account, "properties.minimumTlsVersion");

        // Data roles are granted per container and per table, never on the whole account.
        foreach (var assignment in Resources(template, "Microsoft.Authorization/roleAssignments"))
        {
            var scope = assignment["scope"]?.GetValue<string>() ?? "";
            var role = assignment.ToJsonString();
            if (role.Contains("blobRoles", StringComparison.Ordinal) || role.Contains("tableRoles", StringComparison.Ordinal))
            {
                Assert.True(scope.Contains("blobServices/containers", StringComparison.Ordinal) || scope.Contains("tableServices/tables", StringComparison.Ordinal),
                    $"a data role is assigned at {scope}");
            }
        }
    }

    [Fact]
    public void Key_vault_is_premium_rbac_only_purge_protected_and_private()
    {
        var template = Compiled("infra/modules/keyvault.bicep");
        var vault = Single(template, "Microsoft.KeyVault/vaults");
        AssertValue("premium", vault, "properties.sku.name");
        AssertValue(true, vault, "properties.enableRbacAuthorization");
        AssertValue(true, vault, "properties.enablePurgeProtection");
        AssertValue("Disabled", vault, "properties.publicNetworkAccess");

        // The key-encryption key is a secret the hook or the KeyBroker creates: no template holds a key or a secret value.
        Assert.Empty(Resources(template, "Microsoft.KeyVault/vaults/keys"));
        Assert.Empty(Resources(template, "Microsoft.KeyVault/vaults/secrets"));
    }

    [Fact]
    public void The_keybroker_reads_its_kek_secret_and_may_create_it_only_when_asked()
    {
        const string secretsUser = "4633458b-17de-408a-b874-0445c86b69e6";
        const string secretsOfficer = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7";
        const string cryptoServiceEncryptionUser = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
        var vault = Compiled("infra/modules/keyvault.bicep");
        var variables = vault["variables"]!.AsObject();

        // Each assignment: the role (its variable resolved) and whom it is for.
        var assignments = Resources(vault, "Microsoft.Authorization/roleAssignments").Select(a =>
        {
            var role = At(a, "properties.roleDefinitionId")!.GetValue<string>();
            foreach (var (name, value) in variables)
            {
                role = role.Replace($"variables('{name}')", value!.ToJsonString(), StringComparison.Ordinal);
            }

            return (Role: role, Principals: At(a, "properties.principalId")!.GetValue<string>());
        }).ToList();
        Assert.Contains(assignments, a => a.Role.Contains(secretsUser, StringComparison.Ordinal) && a.Principals == "[parameters('kekReaderPrincipalIds')[copyIndex()]]");
        Assert.Contains(assignments, a => a.Role.Contains(secretsOfficer, StringComparison.Ordinal) && a.Principals == "[parameters('kekCreatorPrincipalIds')[copyIndex()]]");
        Assert.DoesNotContain(assignments, a => a.Role.Contains(secretsOfficer, StringComparison.Ordinal) && a.Principals.Contains("kekReader", StringComparison.Ordinal));
        Assert.DoesNotContain(assignments, a => a.Role.Contains(cryptoServiceEncryptionUser, StringComparison.Ordinal));

        // main.bicep: creators only with keyBrokerCreatesKek (default false); the KeyBroker is told to read the secret.
        var main = Compiled("infra/main.bicep");
        AssertValue(false, main, "parameters.keyBrokerCreatesKek.defaultValue");
        AssertValue("mriseg-keybroker-kek", main, "parameters.keyBrokerKekSecretName.defaultValue");
        var module = Assert.Single(Resources(main, "Microsoft.Resources/deployments"), d => d["name"]?.GetValue<string>() == "keyvault");
        var creators = At(module, "properties.parameters.kekCreatorPrincipalIds")!.GetValue<string>();
        Assert.StartsWith("[if(parameters('keyBrokerCreatesKek'), ", creators, StringComparison.Ordinal);
        Assert.EndsWith("createObject('value', createArray()))]", creators, StringComparison.Ordinal);
        Assert.DoesNotContain("keyBrokerCreatesKek", At(module, "properties.parameters.kekReaderPrincipalIds")!.ToJsonString(), StringComparison.Ordinal);
        var text = main.ToJsonString();
        foreach (var setting in new[] { "KeyBroker__Kek__Source", "KeyBroker__Kek__VaultUri", "KeyBroker__Kek__SecretName", "KeyBroker__Kek__Create", "KeyBroker__CreateKeys" })
        {
            Assert.Contains(setting, text, StringComparison.Ordinal);
        }

        Assert.DoesNotContain("KeyBroker__KeysDirectory", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Services_have_internal_http2_ingress_in_an_internal_environment()
    {
        var app = Single(Compiled("infra/modules/container-app.bicep"), "Microsoft.App/containerApps");
        AssertValue(false, app, "properties.configuration.ingress.external");
        AssertValue("http2", app, "properties.configuration.ingress.transport");
        Assert.Contains("azd-service-name", app["tags"]!.ToJsonString(), StringComparison.Ordinal);

        var environment = Single(Compiled("infra/modules/container-apps-environment.bicep"), "Microsoft.App/managedEnvironments");
        AssertValue(true, environment, "properties.vnetConfiguration.internal");
    }

    [GeneratedRegex(@"^  ([a-z0-9-]+):\s*$")]
    private static partial Regex ServiceKey();

    [GeneratedRegex(@"\{\{[A-Z_]+\}\}")]
    private static partial Regex Placeholder();

    [GeneratedRegex(@"^    project:\s*(\S+)\s*$")]
    private static partial Regex ProjectLine();
}
