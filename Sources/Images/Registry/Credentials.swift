import FoundationEssentials
import Glibc

/// A user name and password for one registry.
public struct RegistryCredential: Sendable, Equatable {
    public var username: String
    public var password: String

    public init(username: String, password: String) { self.username = username; self.password = password }

    /// The `Authorization: Basic` value.
    var basic: String { "Basic " + Data((username + ":" + password).utf8).base64EncodedString() }
}

/// Registry credentials as Docker's config.json holds them (docs/images.md, "Credentials"):
/// `{"auths": {"HOST[:PORT]": {"auth": base64("user:pass")}}}`, or `username`/`password` fields.
/// Credential helpers (`credsStore`, `credHelpers`) are not run.
public struct RegistryCredentials: Sendable {
    /// Keyed by host[:port], as normalised by `key(for:)`.
    public private(set) var byHost: [String: RegistryCredential]

    public init(_ byHost: [String: RegistryCredential] = [:]) {
        self.byHost = [:]
        for (host, credential) in byHost { self.byHost[Self.key(for: host)] = credential }
    }

    public static let none = RegistryCredentials()

    /// Which config file to read, in Docker's order: an explicit path, `$DOCKER_CONFIG/config.json`,
    /// `$HOME/.docker/config.json`. The caller passes in the environment (libraries read none).
    public static func configPath(explicit: String?, dockerConfig: String?, home: String?) -> String? {
        if let explicit { return explicit }
        if let dockerConfig, !dockerConfig.isEmpty { return dockerConfig + "/config.json" }
        if let home, !home.isEmpty { return home + "/.docker/config.json" }
        return nil
    }

    /// Reads a config.json. A missing file is no credentials unless `required` (an explicit
    /// --registry-auth FILE must exist).
    public static func load(path: String, required: Bool) throws(CredentialsError) -> RegistryCredentials {
        let bytes: [UInt8]
        do { bytes = try ContentStore.readFile(path, limit: 4 << 20) } catch {
            if !required, case .io(_, let e) = error, e.code == ENOENT { return .none }
            throw CredentialsError(path: path, reason: error.description)
        }
        return try parse(bytes, path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String = "config.json") throws(CredentialsError) -> RegistryCredentials {
        struct File: Decodable { var auths: [String: Entry]? }
        struct Entry: Decodable { var auth: String?; var username: String?; var password: String? }
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: Data(bytes)) }
        catch { throw CredentialsError(path: path, reason: "not a Docker config.json (\(error))") }
        var result: [String: RegistryCredential] = [:]
        for (host, entry) in file.auths ?? [:] {
            if let auth = entry.auth, !auth.isEmpty {
                guard let decoded = Data(base64Encoded: auth), let text = String(data: decoded, encoding: .utf8),
                      let colon = text.firstIndex(of: ":") else {
                    throw CredentialsError(path: path, reason: "auths.\(host).auth is not base64 of user:password")
                }
                result[host] = RegistryCredential(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
            } else if let username = entry.username, let password = entry.password {
                result[host] = RegistryCredential(username: username, password: password)
            }
        }
        return RegistryCredentials(result)
    }

    /// The credential for a reference's host, if any.
    public func credential(for host: String) -> RegistryCredential? { byHost[Self.key(for: host)] }

    /// `https://index.docker.io/v1/`, `registry-1.docker.io` and `docker.io` are one registry; a
    /// key may carry a scheme and a path.
    static func key(for host: String) -> String {
        var h = Substring(host)
        for scheme in ["https://", "http://"] where h.hasPrefix(scheme) { h = h.dropFirst(scheme.count) }
        if let slash = h.firstIndex(of: "/") { h = h[..<slash] }
        let name = h.lowercased()
        return ["index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"].contains(name) ? ImageReference.dockerHub : name
    }
}

public struct CredentialsError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "registry credentials \(path): \(reason)" }
}
