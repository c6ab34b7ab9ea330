import FoundationEssentials
import Glibc
import Sandbox

/// The control API's JSON bodies, in E2B's shapes (e2b-dev/infra spec/openapi.yml: NewSandbox,
/// Sandbox, ListedSandbox, SandboxDetail, Error). Written from the published description.
struct NewSandboxRequest: Decodable, Sendable {
    var templateID: String
    var timeout: Int?
    var autoPause: Bool?
    var secure: Bool?
    var allowInternetAccess: Bool?
    var metadata: [String: String]?
    var envVars: [String: String]?
    /// Named volumes of the tenant to mount read-write (Volumes.swift).
    var volumeMounts: [VolumeMountRequest]?
    /// E2B's `SandboxNetworkConfig` (Networks.swift).
    var network: NetworkRequest?
    /// Kiln's own: the sandbox's disk and NIC token buckets, within the operator's (RateLimits.swift).
    var rateLimits: RateLimitsBody?

    enum CodingKeys: String, CodingKey {
        case templateID, timeout, autoPause, secure, metadata, envVars, volumeMounts, network, rateLimits
        case allowInternetAccess = "allow_internet_access"
    }

    init(templateID: String, timeout: Int? = nil, autoPause: Bool? = nil, secure: Bool? = nil, allowInternetAccess: Bool? = nil,
         metadata: [String: String]? = nil, envVars: [String: String]? = nil, volumeMounts: [VolumeMountRequest]? = nil,
         network: NetworkRequest? = nil, rateLimits: RateLimitsBody? = nil) {
        self.templateID = templateID; self.timeout = timeout; self.autoPause = autoPause; self.secure = secure
        self.allowInternetAccess = allowInternetAccess; self.metadata = metadata; self.envVars = envVars
        self.volumeMounts = volumeMounts; self.network = network; self.rateLimits = rateLimits
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        templateID = try c.decode(String.self, forKey: .templateID)
        timeout = try c.decodeInteger(forKey: .timeout)
        autoPause = try c.decodeIfPresent(Bool.self, forKey: .autoPause)
        secure = try c.decodeIfPresent(Bool.self, forKey: .secure)
        allowInternetAccess = try c.decodeIfPresent(Bool.self, forKey: .allowInternetAccess)
        metadata = try c.decodeIfPresent([String: String].self, forKey: .metadata)
        envVars = try c.decodeIfPresent([String: String].self, forKey: .envVars)
        volumeMounts = try c.decodeIfPresent([VolumeMountRequest].self, forKey: .volumeMounts)
        network = try c.decodeIfPresent(NetworkRequest.self, forKey: .network)
        rateLimits = try c.decodeIfPresent(RateLimitsBody.self, forKey: .rateLimits)
    }
}

extension NewSandboxRequest {
    /// The request's values, checked by SandboxSettings (Sources/Sandbox/Settings.swift) as the CLI's are.
    func validate() throws(SettingError) {
        if let timeout, timeout < 0 {
            throw SettingError(.lifetime, "must not be negative: " + Setting.lifetime.takes, got: String(timeout))
        }
        try SandboxSettings.checkTemplate(templateID)
        for (name, value) in (envVars ?? [:]).sorted(by: { $0.key < $1.key }) {
            try SandboxSettings.checkEnvironment(name: name, value: value)
        }
    }
}

extension KeyedDecodingContainer {
    /// An optional integer field. swift-foundation reports a number that is no Int (1.5, 1e40)
    /// with an internal error that becomes "not valid JSON" at the document's root; this names the
    /// field instead.
    func decodeInteger(forKey key: Key) throws -> Int? {
        do { return try decodeIfPresent(Int.self, forKey: key) } catch {
            if let number = try? decodeIfPresent(Double.self, forKey: key) {
                throw DecodingError.typeMismatch(Int.self, .init(codingPath: codingPath + [key], debugDescription: "\(number) is not an integer"))
            }
            throw error
        }
    }
}

/// E2B's create answer (`Sandbox`).
struct CreatedSandbox: Encodable, Sendable {
    var templateID: String
    var sandboxID: String
    var alias: String?
    var clientID: String
    var envdVersion: String
    var envdAccessToken: String?
    var domain: String?
}

/// E2B's `ListedSandbox` and `SandboxDetail` (a superset; the SDK reads what each call needs).
struct SandboxDescription: Encodable, Sendable {
    var templateID: String
    var alias: String?
    var sandboxID: String
    var clientID: String
    var startedAt: String
    var endAt: String
    var cpuCount: Int
    var memoryMB: Int
    var diskSizeMB: Int
    var metadata: [String: String]
    var state: String
    var envdVersion: String
    var envdAccessToken: String?
    var domain: String?
    var volumeMounts: [VolumeMountRequest]?
    /// As asked at create (nil: not said), and the egress rules in force (nil: no network).
    var allowInternetAccess: Bool?
    var network: NetworkDescription?
    /// The disk and NIC limits it runs with (nil: none the service set).
    var rateLimits: RateLimitsBody?
}

/// E2B's `SnapshotInfo`.
struct SnapshotBody: Encodable, Sendable { var snapshotID: String; var names: [String] }

/// E2B's `SandboxForkResult`: the new sandbox, or why that clone failed.
struct ForkResult: Encodable, Sendable { var sandbox: CreatedSandbox?; var error: ErrorBody? }

/// E2B's `SandboxMetric`.
struct SandboxMetric: Encodable, Sendable {
    var timestamp: String
    var timestampUnix: Int
    var cpuCount: Int
    var cpuUsedPct: Double
    var memUsed: Int
    var memTotal: Int
    var memCache: Int
    var diskUsed: Int
    var diskTotal: Int
}

struct TimeoutRequest: Decodable, Sendable {
    var timeout: Int
    enum CodingKeys: CodingKey { case timeout }
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard let t = try c.decodeInteger(forKey: .timeout) else {
            throw DecodingError.keyNotFound(CodingKeys.timeout, .init(codingPath: [], debugDescription: "timeout is required"))
        }
        timeout = t
    }
}
struct ConnectRequest: Decodable, Sendable {
    var timeout: Int?
    enum CodingKeys: CodingKey { case timeout }
    init(from decoder: any Decoder) throws { timeout = try decoder.container(keyedBy: CodingKeys.self).decodeInteger(forKey: .timeout) }
}
struct ResumeRequest: Decodable, Sendable {
    var timeout: Int?
    var autoPause: Bool?
    enum CodingKeys: CodingKey { case timeout, autoPause }
    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        timeout = try c.decodeInteger(forKey: .timeout)
        autoPause = try c.decodeIfPresent(Bool.self, forKey: .autoPause)
    }
}
struct RefreshRequest: Decodable, Sendable {
    var duration: Int?
    enum CodingKeys: CodingKey { case duration }
    init(from decoder: any Decoder) throws { duration = try decoder.container(keyedBy: CodingKeys.self).decodeInteger(forKey: .duration) }
}

/// E2B's `Error` body.
struct ErrorBody: Encodable, Sendable {
    var code: Int
    var message: String
}

enum Timestamps {
    /// RFC 3339 in UTC with milliseconds, as E2B's API writes times.
    static func rfc3339(_ seconds: Double) -> String {
        var t = time_t(seconds.rounded(.down))
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        let ms = Int((seconds - seconds.rounded(.down)) * 1000)
        func pad(_ v: Int32, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
