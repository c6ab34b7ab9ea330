import AsyncHTTPClient
import FoundationEssentials
import NIOCore
import NIOHTTP1

/// What a pull needs besides the reference.
public struct PullOptions: Sendable {
    public var credentials: RegistryCredentials
    /// Hosts ("host" or "host:port") reached over plain HTTP. Loopback hosts always are.
    public var insecureRegistries: Set<String>
    public var platform: Platform
    /// No byte for this long on a connection fails the pull (a stalled registry).
    public var readTimeout: TimeAmount

    public init(credentials: RegistryCredentials = .none, insecureRegistries: Set<String> = [],
                platform: Platform = Platform(architecture: "amd64", os: "linux"), readTimeout: TimeAmount = .seconds(60)) {
        self.credentials = credentials; self.insecureRegistries = insecureRegistries
        self.platform = platform; self.readTimeout = readTimeout
    }
}

/// What a pull reports as it goes, for a progress display.
public enum PullEvent: Sendable {
    /// The manifest is known: these blobs (config first, then the layers) are next.
    case resolved(manifest: String, blobs: [Descriptor])
    /// A blob the store already holds verified: not fetched.
    case cached(Descriptor)
    case started(Descriptor)
    case received(Descriptor, bytes: Int64)
    case finished(Descriptor)
}

/// A client of the OCI distribution spec (v2 API), pulling into a `ContentStore`
/// (docs/images.md, "Pull").
public enum Registry {
    /// Pulls `reference` for `options.platform` into `store` and points the reference at it.
    /// Blobs the store holds are not fetched again; every byte is verified against its digest
    /// before it is stored.
    public static func pull(_ reference: ImageReference, into store: ContentStore, options: PullOptions = PullOptions(),
                            progress: (@Sendable (PullEvent) -> Void)? = nil) async throws(RegistryError) -> StoredImage {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .follow(max: 5, allowCycles: false),
            timeout: HTTPClient.Configuration.Timeout(connect: .seconds(30), read: options.readTimeout))
        configuration.httpVersion = .automatic
        // A refused connection is an answer for a CLI: say so at once instead of retrying until the connect timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        var session = PullSession(client: client, reference: reference, options: options, progress: progress)
        let result: Result<StoredImage, RegistryError>
        do { result = .success(try await session.run(into: store)) } catch { result = .failure(error) }
        try? await client.shutdown()
        return try result.get()
    }

    /// Whether requests to `host` go over plain HTTP: loopback, or named by --insecure-registry.
    public static func usesPlainHTTP(_ host: String, insecure: Set<String>) -> Bool {
        if insecure.contains(host) { return true }
        let name: Substring
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
            name = host[host.index(after: host.startIndex)..<close]
        } else {
            name = host.split(separator: ":", maxSplits: 1).first ?? Substring(host)
        }
        if insecure.contains(String(name)) { return true }
        if name == "localhost" || name == "::1" { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    static let manifestAccept = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest].joined(separator: ", ")
    static let documentLimit = 4 << 20
}

/// One pull: the reference, the authorization earned so far, the progress callback.
struct PullSession {
    let client: HTTPClient
    let reference: ImageReference
    let options: PullOptions
    let progress: (@Sendable (PullEvent) -> Void)?
    var authorization: String?
    let base: String

    init(client: HTTPClient, reference: ImageReference, options: PullOptions, progress: (@Sendable (PullEvent) -> Void)?) {
        self.client = client; self.reference = reference; self.options = options; self.progress = progress
        let scheme = Registry.usesPlainHTTP(reference.host, insecure: options.insecureRegistries) ? "http" : "https"
        base = scheme + "://" + reference.registryHost + "/v2/" + reference.repository
    }

    mutating func run(into store: ContentStore) async throws(RegistryError) -> StoredImage {
        let lease: StoreLease
        do { lease = try store.sharedLease() } catch { throw .store(error) }
        defer { lease.release() }

        var (bytes, mediaType, digest) = try await fetchManifest(reference.manifestReference, expected: reference.digest)
        var indexDigest: String?
        var platform: Platform?
        if MediaType.isIndex(mediaType) {
            let index: ImageIndex
            do { index = try JSONDecoder().decode(ImageIndex.self, from: Data(bytes)) }
            catch { throw .badManifest(reference: reference.description, reason: "the image index does not decode (\(error))") }
            let chosen = try choose(from: index)
            do { try store.put(bytes, digest: digest) } catch { throw .store(error) }
            indexDigest = digest
            platform = chosen.platform
            (bytes, mediaType, digest) = try await fetchManifest(chosen.digest, expected: chosen.digest)
            guard Int64(bytes.count) == chosen.size else {
                throw .badManifest(reference: reference.description, reason: "manifest \(chosen.digest) is \(bytes.count) bytes, the index says \(chosen.size)")
            }
        }
        guard MediaType.isManifest(mediaType) else {
            throw .badManifest(reference: reference.description, reason: "unsupported manifest media type '\(mediaType)'")
        }
        let manifest: ImageManifest
        do { manifest = try JSONDecoder().decode(ImageManifest.self, from: Data(bytes)) }
        catch { throw .badManifest(reference: reference.description, reason: "the manifest does not decode (\(error))") }
        try validate(manifest)

        let blobs = [manifest.config] + manifest.layers
        progress?(.resolved(manifest: digest, blobs: blobs))
        for blob in blobs { try await fetchBlob(blob, into: store) }
        do { try store.put(bytes, digest: digest) } catch { throw .store(error) }

        // The configuration must decode before the reference is recorded.
        do {
            let config = try JSONDecoder().decode(ImageConfiguration.self, from: Data(try store.read(manifest.config.digest)))
            if platform == nil, let os = config.os, let arch = config.architecture { platform = Platform(architecture: arch, os: os) }
        } catch let error as StoreError { throw .store(error) }
        catch { throw .badManifest(reference: reference.description, reason: "the image configuration does not decode (\(error))") }

        do throws(StoreError) {
            try store.tag(reference, manifest: digest, index: indexDigest, platform: platform)
            guard let image = try store.image(for: reference) else { throw StoreError.missingBlob(digest) }
            return image
        } catch { throw .store(error) }
    }

    func choose(from index: ImageIndex) throws(RegistryError) -> Descriptor {
        let wanted = options.platform
        let candidates = index.manifests.filter { d in
            guard let p = d.platform, MediaType.isManifest(d.mediaType) else { return false }
            return p.os == wanted.os && p.architecture == wanted.architecture && (wanted.variant == nil || p.variant == wanted.variant)
        }
        guard let chosen = candidates.first else {
            let available = index.manifests.compactMap { $0.platform.map { $0.os + "/" + $0.architecture + ($0.variant.map { "/" + $0 } ?? "") } }
            throw .noPlatform(reference: reference.description, wanted: wanted.os + "/" + wanted.architecture, available: available)
        }
        guard Digest.isValid(chosen.digest) else {
            throw .badManifest(reference: reference.description, reason: "the index names '\(chosen.digest)', not a sha256 digest")
        }
        return chosen
    }

    func validate(_ manifest: ImageManifest) throws(RegistryError) {
        for d in [manifest.config] + manifest.layers {
            guard Digest.isValid(d.digest) else { throw .badManifest(reference: reference.description, reason: "'\(d.digest)' is not a sha256 digest") }
            guard d.size >= 0 else { throw .badManifest(reference: reference.description, reason: "\(d.digest) has a negative size") }
        }
        for layer in manifest.layers where LayerCompression(mediaType: layer.mediaType) == nil {
            throw .badManifest(reference: reference.description, reason: "layer \(layer.digest) has unsupported media type '\(layer.mediaType)'")
        }
    }

    /// GETs a manifest or index, verifying its digest against what the reference pinned or, else,
    /// the registry's Docker-Content-Digest.
    mutating func fetchManifest(_ ref: String, expected: String?) async throws(RegistryError) -> (bytes: [UInt8], mediaType: String, digest: String) {
        let what = reference.host + "/" + reference.repository + (ref.hasPrefix("sha256:") ? "@" : ":") + ref
        let response = try await send(base + "/manifests/" + ref, accept: Registry.manifestAccept, what: what)
        let bytes = try await collect(response, limit: Registry.documentLimit, what: "manifest \(what)")
        let actual = ContentStore.digest(of: bytes)
        let claimed = expected ?? response.headers.first(name: "Docker-Content-Digest").flatMap { Digest.isValid($0) ? $0 : nil }
        if let claimed, claimed != actual { throw .digestMismatch(what: "manifest \(what)", expected: claimed, actual: actual) }
        var mediaType = response.headers.first(name: "Content-Type").map { String($0.split(separator: ";").first ?? "").trimmingCharacters(in: .whitespaces) } ?? ""
        if !MediaType.isIndex(mediaType) && !MediaType.isManifest(mediaType) {
            // Some registries answer application/json: the document's own mediaType decides.
            struct Probe: Decodable { var mediaType: String?; var manifests: [Descriptor]? }
            if let probe = try? JSONDecoder().decode(Probe.self, from: Data(bytes)) {
                mediaType = probe.mediaType ?? (probe.manifests != nil ? MediaType.ociIndex : MediaType.ociManifest)
            }
        }
        return (bytes, mediaType, actual)
    }

    /// Streams a blob into the store unless it is there already; verified as it arrives.
    mutating func fetchBlob(_ blob: Descriptor, into store: ContentStore) async throws(RegistryError) {
        if store.has(blob.digest, size: blob.size) { progress?(.cached(blob)); return }
        progress?(.started(blob))
        let response = try await send(base + "/blobs/" + blob.digest, accept: "*/*", what: blob.digest, deadline: .now() + .hours(24))
        let writer: BlobWriter
        do { writer = try store.ingest(digest: blob.digest, size: blob.size) } catch { throw .store(error) }
        do {
            for try await buffer in response.body {
                try buffer.withUnsafeReadableBytes { try writer.write($0) }
                progress?(.received(blob, bytes: writer.written))
            }
        } catch let error as StoreError {
            writer.discard()
            throw .store(error)
        } catch {
            writer.discard()
            throw .connection(host: reference.host, reason: "blob \(blob.digest): \(Self.describe(error)) after \(writer.written) of \(blob.size) bytes")
        }
        do { try writer.commit() } catch {
            if case .digestMismatch(_, let actual) = error { throw .digestMismatch(what: "blob \(blob.digest)", expected: blob.digest, actual: actual) }
            throw .store(error)
        }
        progress?(.finished(blob))
    }

    /// One GET, answering a 401 challenge once (Bearer token or Basic credentials), mapping
    /// error statuses to `RegistryError`. Returns a 2xx response with its body unread.
    mutating func send(_ url: String, accept: String, what: String, deadline: NIODeadline = .now() + .seconds(120)) async throws(RegistryError) -> HTTPClientResponse {
        var challenged = false
        while true {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Accept", value: accept)
            request.headers.add(name: "User-Agent", value: "kiln")
            if let authorization { request.headers.add(name: "Authorization", value: authorization) }
            let response: HTTPClientResponse
            do { response = try await client.execute(request, deadline: deadline) }
            catch { throw .connection(host: reference.host, reason: Self.describe(error)) }
            let status = Int(response.status.code)
            if (200..<300).contains(status) { return response }
            let detail = await errorDetail(response)
            switch status {
            case 401 where !challenged:
                challenged = true
                guard let header = response.headers.first(name: "WWW-Authenticate"), let challenge = AuthChallenge(header) else {
                    throw .unauthorized(host: reference.host, repository: reference.repository, detail: "the registry sent no usable WWW-Authenticate challenge")
                }
                authorization = try await answer(challenge)
            case 401:
                let credential = options.credentials.credential(for: reference.host)
                throw .unauthorized(host: reference.host, repository: reference.repository,
                                    detail: credential == nil ? "no credentials for \(reference.host) (--registry-auth)" : "the registry refused the credentials for \(credential!.username)")
            case 403: throw .denied(host: reference.host, repository: reference.repository, detail: detail)
            case 404: throw .notFound(what: what, detail: detail)
            case 429: throw .tooManyRequests(host: reference.host)
            case 500...599: throw .server(host: reference.host, status: status, detail: detail)
            default: throw .unexpectedStatus(host: reference.host, status: status, detail: detail)
            }
        }
    }

    /// The Authorization value for a challenge: Basic from the credentials, or a Bearer token
    /// from the challenge's realm (anonymously when there are no credentials).
    func answer(_ challenge: AuthChallenge) async throws(RegistryError) -> String {
        let credential = options.credentials.credential(for: reference.host)
        switch challenge.scheme {
        case "basic":
            guard let credential else {
                throw .unauthorized(host: reference.host, repository: reference.repository, detail: "the registry wants a user name and password (--registry-auth)")
            }
            return credential.basic
        case "bearer":
            guard let realm = challenge.parameters["realm"], realm.hasPrefix("https://") || realm.hasPrefix("http://") else {
                throw .unauthorized(host: reference.host, repository: reference.repository, detail: "the Bearer challenge has no http(s) realm")
            }
            var query: [String] = []
            if let service = challenge.parameters["service"] { query.append("service=" + Self.percentEncode(service)) }
            query.append("scope=" + Self.percentEncode(challenge.parameters["scope"] ?? "repository:\(reference.repository):pull"))
            var request = HTTPClientRequest(url: realm + (realm.contains("?") ? "&" : "?") + query.joined(separator: "&"))
            request.headers.add(name: "User-Agent", value: "kiln")
            if let credential { request.headers.add(name: "Authorization", value: credential.basic) }
            let response: HTTPClientResponse
            do { response = try await client.execute(request, timeout: .seconds(60)) }
            catch { throw .tokenService(realm: realm, reason: Self.describe(error)) }
            let status = Int(response.status.code)
            if status == 401 || status == 403 {
                throw .unauthorized(host: reference.host, repository: reference.repository,
                                    detail: credential == nil ? "the token service wants credentials (--registry-auth)" : "the token service refused the credentials for \(credential!.username)")
            }
            guard (200..<300).contains(status) else { throw .tokenService(realm: realm, reason: "HTTP status \(status)") }
            struct Token: Decodable { var token: String?; var access_token: String? }
            let bytes: [UInt8]
            do { bytes = Array(buffer: try await response.body.collect(upTo: 1 << 20)) }
            catch { throw .tokenService(realm: realm, reason: Self.describe(error)) }
            guard let decoded = try? JSONDecoder().decode(Token.self, from: Data(bytes)), let token = decoded.token ?? decoded.access_token, !token.isEmpty else {
                throw .tokenService(realm: realm, reason: "the answer holds no token")
            }
            return "Bearer " + token
        default:
            throw .unauthorized(host: reference.host, repository: reference.repository, detail: "unsupported authentication scheme '\(challenge.scheme)'")
        }
    }

    func collect(_ response: HTTPClientResponse, limit: Int, what: String) async throws(RegistryError) -> [UInt8] {
        do { return Array(buffer: try await response.body.collect(upTo: limit)) }
        catch let error as NIOTooManyBytesError { _ = error; throw .badManifest(reference: what, reason: "larger than \(limit) bytes") }
        catch { throw .connection(host: reference.host, reason: "\(what): \(Self.describe(error))") }
    }

    /// The first error message of a distribution-spec error body ({"errors": [{"code", "message"}]}).
    func errorDetail(_ response: HTTPClientResponse) async -> String {
        guard let buffer = try? await response.body.collect(upTo: 64 << 10) else { return "" }
        struct Body: Decodable { struct E: Decodable { var code: String?; var message: String? }; var errors: [E]? }
        guard let body = try? JSONDecoder().decode(Body.self, from: Data(Array(buffer: buffer))), let first = body.errors?.first else { return "" }
        return [first.code, first.message].compactMap { $0 }.joined(separator: ": ")
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .remoteConnectionClosed: return "the registry closed the connection"
            case .readTimeout: return "timed out waiting for the registry"
            case .connectTimeout: return "timed out connecting"
            case .deadlineExceeded: return "the request took too long"
            case .bodyLengthMismatch: return "the response ended before its Content-Length"
            default: return "\(e)"
            }
        }
        if let e = error as? HTTPParserError, e == .invalidEOFState { return "the registry closed the connection" }
        let text = "\(error)"
        if text.contains("Connection refused") || text.contains("connection refused") { return "connection refused" }
        if text.contains("NIOSSL") || text.contains("handshake") { return "TLS failed (\(text)); a plain-HTTP registry needs --insecure-registry" }
        return text
    }

    static func percentEncode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E {
                out.append(Character(Unicode.Scalar(b)))
            } else {
                let digits = Array("0123456789ABCDEF")
                out += "%" + String(digits[Int(b >> 4)]) + String(digits[Int(b & 15)])
            }
        }
        return out
    }
}

/// A `WWW-Authenticate` challenge: `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
struct AuthChallenge: Equatable {
    var scheme: String
    var parameters: [String: String]

    init(scheme: String, parameters: [String: String]) { self.scheme = scheme; self.parameters = parameters }

    init?(_ header: String) {
        let trimmed = header.drop { $0 == " " }
        guard let space = trimmed.firstIndex(of: " ") else {
            guard !trimmed.isEmpty else { return nil }
            scheme = trimmed.lowercased(); parameters = [:]; return
        }
        scheme = trimmed[..<space].lowercased()
        parameters = [:]
        var rest = Array(trimmed[trimmed.index(after: space)...])
        var i = 0
        while i < rest.count {
            while i < rest.count, rest[i] == " " || rest[i] == "," { i += 1 }
            var key = ""
            while i < rest.count, rest[i] != "=" { key.append(rest[i]); i += 1 }
            guard i < rest.count else { break }
            i += 1
            var value = ""
            if i < rest.count, rest[i] == "\"" {
                i += 1
                while i < rest.count, rest[i] != "\"" {
                    if rest[i] == "\\", i + 1 < rest.count { i += 1 }
                    value.append(rest[i]); i += 1
                }
                i += 1
            } else {
                while i < rest.count, rest[i] != "," { value.append(rest[i]); i += 1 }
            }
            parameters[key.trimmingCharacters(in: .whitespaces).lowercased()] = value
        }
        rest.removeAll()
    }
}
