import FoundationEssentials
import Glibc

/// Who may use the service: each API key belongs to one tenant, whose sandboxes it alone sees.
public struct Tenant: Codable, Sendable, Equatable {
    public var name: String
    public var apiKeys: [String]
    /// Running sandboxes at once (E2B's concurrency limit).
    public var maxSandboxes: Int
    /// Guest memory of its running sandboxes together.
    public var maxMemoryMiB: Int

    public init(name: String, apiKeys: [String], maxSandboxes: Int = 20, maxMemoryMiB: Int = 8192) {
        self.name = name; self.apiKeys = apiKeys; self.maxSandboxes = maxSandboxes; self.maxMemoryMiB = maxMemoryMiB
    }

    enum CodingKeys: String, CodingKey { case name, apiKeys, maxSandboxes, maxMemoryMiB }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        apiKeys = try c.decode([String].self, forKey: .apiKeys)
        maxSandboxes = try c.decodeIfPresent(Int.self, forKey: .maxSandboxes) ?? 20
        maxMemoryMiB = try c.decodeIfPresent(Int.self, forKey: .maxMemoryMiB) ?? 8192
    }
}

public struct TenantsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

/// The tenants file (`--tenants FILE`): `{"tenants": [{"name", "apiKeys", "maxSandboxes", "maxMemoryMiB"}]}`.
public struct Tenants: Sendable {
    public let all: [Tenant]
    let byKey: [String: Int]

    public init(_ tenants: [Tenant]) throws(TenantsError) {
        var byKey: [String: Int] = [:]
        var names = Set<String>()
        guard !tenants.isEmpty else { throw TenantsError("the tenants file names no tenant") }
        for (i, t) in tenants.enumerated() {
            guard !t.name.isEmpty, t.name.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else { throw TenantsError("tenant \(i + 1): the name must be non-empty printable ASCII without spaces") }
            guard names.insert(t.name).inserted else { throw TenantsError("tenant '\(t.name)' is named twice") }
            guard !t.apiKeys.isEmpty else { throw TenantsError("tenant '\(t.name)' has no API key") }
            guard t.maxSandboxes >= 0, t.maxMemoryMiB >= 0 else { throw TenantsError("tenant '\(t.name)': limits must not be negative") }
            for k in t.apiKeys {
                guard k.utf8.count >= 8 else { throw TenantsError("tenant '\(t.name)': an API key is shorter than 8 characters") }
                guard byKey[k] == nil else { throw TenantsError("an API key of tenant '\(t.name)' belongs to another tenant too") }
                byKey[k] = i
            }
        }
        self.all = tenants
        self.byKey = byKey
    }

    public static func load(path: String) throws(TenantsError) -> Tenants {
        let bytes: [UInt8]
        do { bytes = try FileIO.read(path) } catch { throw TenantsError("cannot read \(path): \(error)") }
        return try parse(bytes, source: path)
    }

    /// A tenants file's contents; `source` names it in errors.
    static func parse(_ bytes: [UInt8], source: String) throws(TenantsError) -> Tenants {
        struct File: Decodable { let tenants: [Tenant] }
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: Data(bytes)) } catch {
            throw TenantsError("\(source) is not a valid tenants file: \(JSONErrors.describe(error))")
        }
        return try Tenants(file.tenants)
    }

    /// The single-user default: one tenant whose key is generated on first start and kept in
    /// `stateDirectory/api-key`. Returns the key when it was just generated (to print once).
    public static func local(stateDirectory: String) throws(TenantsError) -> (Tenants, generated: String?) {
        let path = stateDirectory + "/api-key"
        if let existing = try? FileIO.read(path) {
            let key = String(decoding: existing.filter { $0 > 32 }, as: UTF8.self)
            if key.utf8.count >= 8 { return (try Tenants([Tenant(name: "local", apiKeys: [key])]), nil) }
        }
        let key = "kiln_" + Random.hex(bytes: 20)
        do { try FileIO.writeAtomically(path, Array((key + "\n").utf8), mode: 0o600) } catch {
            throw TenantsError("cannot store the generated API key in \(path): \(error)")
        }
        return (try Tenants([Tenant(name: "local", apiKeys: [key])]), key)
    }

    /// The tenant that owns `key`, comparing in constant time per candidate.
    public func tenant(forKey key: String) -> Tenant? {
        for (k, i) in byKey where Self.constantTimeEqual(k, key) { return all[i] }
        return nil
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var d: UInt8 = 0
        for i in x.indices { d |= x[i] ^ y[i] }
        return d == 0
    }
}
