using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Azure.Storage.Blobs.Specialized;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using MriSeg.Sealing;
using MriSeg.ServiceDefaults;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Packaging;

/// <summary>
/// Seal and Verify over <c>MriSeg.Sealing</c>, and HandOffKey over the KeyBroker's import (<see cref="KeyHandOff"/>):
/// a thin host that validates requests, streams between storage and the library, and maps failures to statuses.
/// </summary>
public sealed class PackagingService(
    BlobServiceClient blobs,
    PartyRegistry parties,
    OwnerKeyStore keys,
    KeyHandOff handOff,
    PackagingSettings settings,
    ILogger<PackagingService> logger) : V1.Packaging.PackagingBase
{
    /// <summary>The Content-Type of a sealed blob.</summary>
    public const string SealedContentType = "application/vnd.mriseg.sealed-package";

    public override async Task Seal(V1.SealRequest request, IServerStreamWriter<V1.SealProgress> responseStream, ServerCallContext context)
    {
        var cancellationToken = context.CancellationToken;
        SealJob? job = null;
        try
        {
            await SealCoreAsync(request, responseStream, started => job = started, cancellationToken);
        }
        catch (Exception e)
        {
            var status = Errors.Map(e, "seal", logger, cancellationToken);
            if (job is not null)
            {
                await job.TryFailAsync(status.Status.Detail);
            }

            throw status;
        }
    }

    public override async Task<V1.VerifyResponse> Verify(V1.VerifyRequest request, ServerCallContext context)
    {
        var cancellationToken = context.CancellationToken;
        try
        {
            return await VerifyCoreAsync(request, cancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "verify", logger, cancellationToken);
        }
    }

    public override async Task<V1.HandOffKeyResponse> HandOffKey(V1.HandOffKeyRequest request, ServerCallContext context)
    {
        var cancellationToken = context.CancellationToken;
        try
        {
            return await handOff.HandOffAsync(request, cancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "hand off key", logger, cancellationToken);
        }
    }

    private async Task SealCoreAsync(V1.SealRequest request, IServerStreamWriter<V1.SealProgress> responseStream,
        Action<SealJob> started, CancellationToken cancellationToken)
    {
        // 1. Everything that can be checked without touching storage.
        var owner = OwnerIds.Canonicalize(request.Owner, out var ownerError) ?? throw GrpcErrors.InvalidArgument(ownerError);
        var contentType = Mapping.ToLibrary(request.ContentType)
            ?? throw GrpcErrors.InvalidArgument("content_type is required: dataset, model, pipeline, output or checkpoint");
        var chunkSize = request.ChunkSize == 0 ? PackageFormat.DefaultChunkSize : request.ChunkSize;
        if (chunkSize < PackageFormat.MinChunkSize || chunkSize > PackageFormat.MaxChunkSize)
        {
            throw GrpcErrors.InvalidArgument($"chunk_size {request.ChunkSize}: must be 0 (the default) or between {PackageFormat.MinChunkSize} and {PackageFormat.MaxChunkSize}");
        }

        if (request.RecipientIsKeyBroker && !string.IsNullOrWhiteSpace(request.RecipientPublicKeyPem))
        {
            throw GrpcErrors.InvalidArgument("give recipient_public_key_pem or recipient_is_key_broker, not both");
        }

        var recipient = request.RecipientIsKeyBroker
            ? await handOff.BrokerRecipientAsync(owner, Mapping.PurposeOf(contentType), cancellationToken)
            : ParseRecipient(request.RecipientPublicKeyPem);
        var source = ParseSource(request.Source);
        var destinationContainer = string.IsNullOrEmpty(request.Destination?.Container) ? owner : request.Destination.Container;
        if (!OwnerIds.IsContainerName(destinationContainer))
        {
            throw GrpcErrors.InvalidArgument($"destination.container '{OwnerIds.Printable(destinationContainer)}' is not a valid container name: {OwnerIds.Rule}, lower case");
        }

        var destinationName = string.IsNullOrEmpty(request.Destination?.Name) ? null : request.Destination.Name;
        if (destinationName is not null && OwnerIds.BlobNameProblem(destinationName) is { } nameProblem)
        {
            throw GrpcErrors.InvalidArgument($"destination.name {nameProblem}");
        }

        // 2. The owner's signing key, registered (trust on first use) so that Verify can check its packages.
        var signer = await keys.GetAsync(owner, cancellationToken);
        await parties.EnsureRegisteredAsync(owner, signer.PublicKey, cancellationToken);

        // 3. The source, then the destination.
        var (input, total, sourceName, sourceText) = await OpenSourceAsync(source, cancellationToken);
        await using var plaintext = input;
        var container = blobs.GetBlobContainerClient(destinationContainer);
        await container.CreateIfNotExistsAsync(cancellationToken: cancellationToken);
        var name = await ChooseDestinationNameAsync(container, destinationName, sourceName, cancellationToken);
        var destinationText = $"{destinationContainer}/{name}";

        // 4. Seal, streaming from the source into staged blocks; the blob appears only at the commit.
        var job = new SealJob(responseStream, Guid.NewGuid().ToString("n"), total, $"sealing {sourceText} into {destinationText}", settings.ProgressInterval);
        started(job);
        await job.StartAsync(cancellationToken);

        using var key = DataKey.Generate();
        await using var upload = new BlockBlobUploadStream(container.GetBlockBlobClient(name));
        await using var sealedOut = MeteredStream.ForWriting(upload, sha256: true, leaveOpen: true);
        await using var plainIn = MeteredStream.ForReading(plaintext, progress: job.ReportAsync, leaveOpen: true);
        var options = new SealOptions
        {
            ContentType = contentType,
            Owner = owner,
            ChunkSize = chunkSize,
            Metadata = request.Metadata.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal),
        };

        PackageInfo info;
        try
        {
            info = await SealedPackage.SealAsync(plainIn, sealedOut, key, signer, options, cancellationToken);
        }
        catch (RequestFailedException e) when (e.Status == 412)
        {
            throw GrpcErrors.FailedPrecondition($"source {sourceText} changed while it was being sealed");
        }

        var sealedSha256 = sealedOut.Sha256Hex!;
        BlobContentInfo committed;
        try
        {
            committed = await upload.CommitAsync(new CommitBlockListOptions
            {
                Conditions = new BlobRequestConditions { IfNoneMatch = ETag.All },
                HttpHeaders = new BlobHttpHeaders { ContentType = SealedContentType },
                Metadata = new Dictionary<string, string>
                {
                    ["mriseg_owner"] = owner,
                    ["mriseg_content_type"] = contentType.ToString().ToLowerInvariant(),
                    ["mriseg_key_id"] = info.KeyId,
                    ["mriseg_sealed_sha256"] = sealedSha256,
                },
            }, cancellationToken);
        }
        catch (RequestFailedException e) when (e.Status is 409 or 412)
        {
            throw GrpcErrors.AlreadyExists($"destination {destinationText} appeared while sealing: a sealed blob is never replaced");
        }

        var wrapped = KeyWrap.Wrap(key, recipient);
        logger.LogInformation("Sealed {Source} into {Destination} for owner {Owner}: {Bytes} bytes, key id {KeyId}, wrapped for {Recipient}",
            sourceText, destinationText, owner, info.Manifest.PlaintextLength, info.KeyId, wrapped.RecipientThumbprint);

        await job.SucceedAsync(new V1.SealResult
        {
            Package = new V1.SealedPackageRef
            {
                Blob = new V1.BlobRef { Container = destinationContainer, Name = name, Etag = committed.ETag.ToString() },
                KeyId = info.KeyId,
                ContentType = Mapping.ToContract(contentType),
                Owner = owner,
                SealedSha256 = sealedSha256,
            },
            Manifest = Mapping.ToContract(info),
            WrappedDataKey = ByteString.CopyFromUtf8(wrapped.ToJson()),
            WrapAlgorithm = WrappedKey.AlgorithmName(wrapped.Algorithm),
        }, info.Manifest.PlaintextLength, cancellationToken);
    }

    private async Task<V1.VerifyResponse> VerifyCoreAsync(V1.VerifyRequest request, CancellationToken cancellationToken)
    {
        var package = request.Package ?? throw GrpcErrors.InvalidArgument("package is required");
        var (container, name) = ParseBlob(package.Blob, "package.blob");
        if (string.IsNullOrEmpty(package.Owner))
        {
            throw GrpcErrors.InvalidArgument("package.owner is required: Verify checks the signature against that owner's registered key");
        }

        var owner = OwnerIds.Canonicalize(package.Owner, out var ownerError) ?? throw GrpcErrors.InvalidArgument("package." + ownerError);
        var expectedSha = ParseHex(package.SealedSha256, 32, "package.sealed_sha256");
        var expectedKeyId = ParseHex(package.KeyId, PackageFormat.KeyIdLength, "package.key_id");
        var expectedType = package.ContentType == V1.ContentType.Unspecified ? (ContentType?)null
            : Mapping.ToLibrary(package.ContentType) ?? throw GrpcErrors.InvalidArgument($"package.content_type {(int)package.ContentType} is unknown");

        var registered = await parties.FindAsync(owner, cancellationToken)
            ?? throw GrpcErrors.FailedPrecondition($"owner '{owner}' has no registered signing key (table {PartyRegistry.TableName}): there is no key to check the signature against");
        using var signerKey = SignerPublicKey.FromPem(registered.PublicKeyPem);

        var blob = blobs.GetBlobContainerClient(container).GetBlobClient(name);
        var what = $"package blob {container}/{name}";
        BlobDownloadStreamingResult download;
        try
        {
            download = await blob.DownloadStreamingAsync(new BlobDownloadOptions { Conditions = IfMatch(package.Blob.Etag) }, cancellationToken);
        }
        catch (RequestFailedException e)
        {
            throw Errors.FromStorage(e, what);
        }

        await using var content = download.Content;
        await using var metered = MeteredStream.ForReading(content, sha256: true, leaveOpen: true);
        PackageInfo info;
        try
        {
            info = await SealedPackage.VerifyWithoutKeyAsync(metered, SignerCheck.Expect(signerKey), cancellationToken);
        }
        catch (SealedPackageException e)
        {
            logger.LogWarning("Verify {Blob} for owner {Owner}: invalid: {Reason}", $"{container}/{name}", owner, e.Message);
            return new V1.VerifyResponse { Valid = false, Failure = e.Message };
        }
        catch (RequestFailedException e)
        {
            throw Errors.FromStorage(e, what);
        }

        var sealedSha = metered.Sha256Hex!;
        string? failure = null;
        if (!string.Equals(info.Manifest.Owner, owner, StringComparison.Ordinal))
        {
            failure = $"the manifest names owner '{OwnerIds.Printable(info.Manifest.Owner)}', not '{owner}'";
        }
        else if (expectedKeyId is not null && !string.Equals(info.KeyId, expectedKeyId, StringComparison.Ordinal))
        {
            failure = $"the package is sealed under key id {info.KeyId}, not {expectedKeyId}";
        }
        else if (expectedType is { } type && info.Manifest.ContentType != type)
        {
            failure = $"the package holds a {info.Manifest.ContentType.ToString().ToLowerInvariant()}, not a {type.ToString().ToLowerInvariant()}";
        }
        else if (expectedSha is not null && !string.Equals(sealedSha, expectedSha, StringComparison.Ordinal))
        {
            failure = $"sealed SHA-256 {sealedSha[..16]}… does not match the expected {expectedSha[..16]}…: the blob's bytes are not the ones sealed";
        }

        logger.LogInformation("Verify {Blob} for owner {Owner}: {Outcome}", $"{container}/{name}", owner, failure ?? "valid");
        return new V1.VerifyResponse
        {
            Valid = failure is null,
            Failure = failure ?? "",
            Manifest = Mapping.ToContract(info),
            Signer = info.Manifest.SignerThumbprint,
            SealedSha256 = sealedSha,
            CiphertextChecked = failure is null && expectedSha is not null,
        };
    }

    private static RecipientPublicKey ParseRecipient(string pem)
    {
        if (string.IsNullOrWhiteSpace(pem))
        {
            throw GrpcErrors.InvalidArgument(
                "recipient_public_key_pem is required: the fresh data key is returned only wrapped to a public key whose private half you hold (RSA or P-256 PEM, e.g. from `mriseg keygen --recipient`); the service keeps no copy of it");
        }

        try
        {
            return RecipientPublicKey.FromPem(pem);
        }
        catch (Exception e) when (e is SealedPackageException or FormatException or CryptographicException)
        {
            throw GrpcErrors.InvalidArgument($"recipient_public_key_pem: {(e is SealedPackageException ? e.Message : "not a PUBLIC KEY PEM")}");
        }
    }

    private abstract record Source;

    private sealed record BlobSource(string Container, string Name, string? ETag) : Source;

    private sealed record LocalSource(string Path) : Source;

    private Source ParseSource(V1.Location? location)
    {
        switch (location?.WhereCase)
        {
            case V1.Location.WhereOneofCase.Blob:
                var (container, name) = ParseBlob(location.Blob, "source.blob");
                return new BlobSource(container, name, string.IsNullOrEmpty(location.Blob.Etag) ? null : location.Blob.Etag);
            case V1.Location.WhereOneofCase.LocalPath:
                if (!settings.AllowLocalPaths)
                {
                    throw GrpcErrors.FailedPrecondition("source.local_path: this service does not read local paths (Packaging:AllowLocalPaths is off); upload the file to a blob");
                }

                if (!Path.IsPathFullyQualified(location.LocalPath) || location.LocalPath.Any(char.IsControl))
                {
                    throw GrpcErrors.InvalidArgument("source.local_path must be an absolute path on the service's machine");
                }

                return new LocalSource(Path.GetFullPath(location.LocalPath));
            default:
                throw GrpcErrors.InvalidArgument("source is required: a blob (source.blob) or, where the service allows it, a local path (source.local_path)");
        }
    }

    private static (string Container, string Name) ParseBlob(V1.BlobRef? blob, string field)
    {
        if (blob is null || string.IsNullOrEmpty(blob.Container) || string.IsNullOrEmpty(blob.Name))
        {
            throw GrpcErrors.InvalidArgument($"{field} needs a container and a name");
        }

        if (!OwnerIds.IsContainerName(blob.Container))
        {
            throw GrpcErrors.InvalidArgument($"{field}.container '{OwnerIds.Printable(blob.Container)}' is not a valid container name: {OwnerIds.Rule}, lower case");
        }

        if (OwnerIds.BlobNameProblem(blob.Name) is { } problem)
        {
            throw GrpcErrors.InvalidArgument($"{field}.name {problem}");
        }

        return (blob.Container, blob.Name);
    }

    private static string? ParseHex(string text, int bytes, string field)
    {
        if (string.IsNullOrEmpty(text))
        {
            return null;
        }

        if (text.Length != bytes * 2 || !text.All(char.IsAsciiHexDigit))
        {
            throw GrpcErrors.InvalidArgument($"{field} must be {bytes * 2} hex digits");
        }

        return text.ToLowerInvariant();
    }

    private static BlobRequestConditions? IfMatch(string? etag) =>
        string.IsNullOrEmpty(etag) ? null : new BlobRequestConditions { IfMatch = new ETag(etag) };

    private async Task<(Stream Stream, long Length, string Name, string Text)> OpenSourceAsync(Source source, CancellationToken cancellationToken)
    {
        if (source is BlobSource b)
        {
            var text = $"blob {b.Container}/{b.Name}";
            try
            {
                var download = await blobs.GetBlobContainerClient(b.Container).GetBlobClient(b.Name)
                    .DownloadStreamingAsync(new BlobDownloadOptions { Conditions = IfMatch(b.ETag) }, cancellationToken);
                return (download.Value.Content, download.Value.Details.ContentLength, b.Name, text);
            }
            catch (RequestFailedException e)
            {
                throw Errors.FromStorage(e, "source " + text);
            }
        }

        var path = ((LocalSource)source).Path;
        var resolved = new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? path;
        if (keys.IsInKeyFolder(path) || keys.IsInKeyFolder(resolved))
        {
            throw GrpcErrors.PermissionDenied("source.local_path: files in the service's key folder are never sealed");
        }

        try
        {
            var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan);
            return (stream, stream.Length, Path.GetFileName(path), "file " + path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw GrpcErrors.NotFound($"source.local_path {path}: no such file");
        }
        catch (UnauthorizedAccessException)
        {
            throw GrpcErrors.PermissionDenied($"source.local_path {path}: the service may not read it (or it is a folder)");
        }
    }

    private static async Task<string> ChooseDestinationNameAsync(BlobContainerClient container, string? requested, string sourceName, CancellationToken cancellationToken)
    {
        if (requested is not null)
        {
            if (await container.GetBlobClient(requested).ExistsAsync(cancellationToken))
            {
                throw GrpcErrors.AlreadyExists($"destination {container.Name}/{requested} exists: a sealed blob is never replaced");
            }

            return requested;
        }

        var name = sourceName + ".sealed";
        if (OwnerIds.BlobNameProblem(name) is null && !await container.GetBlobClient(name).ExistsAsync(cancellationToken))
        {
            return name;
        }

        var stamp = DateTimeOffset.UtcNow.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);
        var stem = sourceName.Length > 900 ? sourceName[..900] : sourceName;
        return $"{stem}.{stamp}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}.sealed";
    }

    /// <summary>The progress stream of one Seal: RUNNING messages at most every interval, then SUCCEEDED with the result or FAILED.</summary>
    private sealed class SealJob(IServerStreamWriter<V1.SealProgress> stream, string jobId, long total, string message, TimeSpan interval)
    {
        private long _lastSent;
        private long _done;

        public Task StartAsync(CancellationToken cancellationToken)
        {
            _lastSent = Stopwatch.GetTimestamp();
            return stream.WriteAsync(new V1.SealProgress { Progress = Progress(V1.JobState.Running, 0) }, cancellationToken);
        }

        public async ValueTask ReportAsync(long done, CancellationToken cancellationToken)
        {
            _done = done;
            if (Stopwatch.GetElapsedTime(_lastSent) < interval)
            {
                return;
            }

            _lastSent = Stopwatch.GetTimestamp();
            await stream.WriteAsync(new V1.SealProgress { Progress = Progress(V1.JobState.Running, done) }, cancellationToken);
        }

        public Task SucceedAsync(V1.SealResult result, long done, CancellationToken cancellationToken) =>
            stream.WriteAsync(new V1.SealProgress { Progress = Progress(V1.JobState.Succeeded, done), Result = result }, cancellationToken);

        /// <summary>Best effort: the client may be gone; the status that follows says the same.</summary>
        public async Task TryFailAsync(string error)
        {
            try
            {
                var failed = Progress(V1.JobState.Failed, _done);
                failed.Error = error;
                await stream.WriteAsync(new V1.SealProgress { Progress = failed });
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or OperationCanceledException or RpcException)
            {
            }
        }

        private V1.JobProgress Progress(V1.JobState state, long done) => new()
        {
            JobId = jobId,
            State = state,
            Step = "sealing",
            Message = message,
            Done = Math.Max(0, done),
            Total = total,
            Unit = "bytes",
            At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
        };
    }
}
