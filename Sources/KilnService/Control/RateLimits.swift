import Devices
import FoundationEssentials
import Sandbox

// Per-sandbox rate limits on create (docs/service.md, "Rate limits"): a Kiln field beside E2B's,
// `rateLimits: {disk, net}`, each a pair of token buckets in Firecracker's model (bandwidth in
// bytes, ops in requests; `size` tokens per `refillTime` ms, `oneTimeBurst` spent first). The
// operator's limits (`kiln serve --disk-rate/--net-rate`) are a ceiling: a tenant may ask for
// less, never more. The record keeps the limits the sandbox runs with; pause, resume and fork
// carry them.

/// One bucket: `size` tokens per `refillTime` milliseconds (default 1000: a per-second rate), and
/// `oneTimeBurst` extra tokens spent before the bucket's own.
struct BucketBody: Codable, Sendable, Equatable {
    var size: UInt64
    var oneTimeBurst: UInt64?
    var refillTime: UInt64?

    enum CodingKeys: String, CodingKey, CaseIterable { case size, oneTimeBurst, refillTime }

    init(_ limit: TokenBucket.Limit) {
        size = limit.size
        oneTimeBurst = limit.oneTimeBurst == 0 ? nil : limit.oneTimeBurst
        refillTime = limit.refillMilliseconds == 1000 ? nil : limit.refillMilliseconds
    }

    init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.allCases.map(\.rawValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // A number that is no UInt64 (-1, 2.5, 1e30) is the field's type error, not a document
        // the decoder calls corrupt without saying where.
        func count(_ key: CodingKeys) throws -> UInt64? {
            guard c.contains(key), try !c.decodeNil(forKey: key) else { return nil }
            if let n = try? c.decode(UInt64.self, forKey: key) { return n }
            if (try? c.decode(Double.self, forKey: key)) != nil {
                throw DecodingError.typeMismatch(UInt64.self, .init(codingPath: c.codingPath + [key], debugDescription: "not a UInt64"))
            }
            return try c.decode(UInt64.self, forKey: key)
        }
        guard let size = try count(.size) else {
            throw DecodingError.keyNotFound(CodingKeys.size, .init(codingPath: c.codingPath, debugDescription: "no size"))
        }
        self.size = size
        oneTimeBurst = try count(.oneTimeBurst)
        refillTime = try count(.refillTime)
    }

    /// The bucket, or why not (`field` names it in the message).
    func limit(_ field: String) throws(APIError) -> TokenBucket.Limit {
        let limit = TokenBucket.Limit(size: size, oneTimeBurst: oneTimeBurst ?? 0, refillMilliseconds: refillTime ?? 1000)
        guard limit.isValid else {
            throw APIError(400, "\(field): size must be 1 to \(TokenBucket.Limit.maximumSize), oneTimeBurst at most that, "
                + "refillTime 1 to \(TokenBucket.Limit.maximumRefillMilliseconds) ms")
        }
        return limit
    }
}

/// One device's limit: a bandwidth bucket (bytes), an ops bucket (requests), either or both.
struct DeviceLimitBody: Codable, Sendable, Equatable {
    var bandwidth: BucketBody?
    var ops: BucketBody?

    enum CodingKeys: String, CodingKey, CaseIterable { case bandwidth, ops }

    init(_ limit: RateLimit) {
        bandwidth = limit.bandwidth.map(BucketBody.init)
        ops = limit.operations.map(BucketBody.init)
    }

    init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.allCases.map(\.rawValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        bandwidth = try c.decodeIfPresent(BucketBody.self, forKey: .bandwidth)
        ops = try c.decodeIfPresent(BucketBody.self, forKey: .ops)
    }

    func limit(_ field: String) throws(APIError) -> RateLimit {
        let limit = RateLimit(bandwidth: try bandwidth?.limit(field + ".bandwidth"), operations: try ops?.limit(field + ".ops"))
        guard !limit.isUnlimited else { throw APIError(400, "\(field) needs a bandwidth or an ops bucket") }
        return limit
    }
}

/// `rateLimits` on create, and in a sandbox's detail (the limits it runs with).
struct RateLimitsBody: Codable, Sendable, Equatable {
    var disk: DeviceLimitBody?
    var net: DeviceLimitBody?

    enum CodingKeys: String, CodingKey, CaseIterable { case disk, net }

    init(disk: DeviceLimitBody? = nil, net: DeviceLimitBody? = nil) { self.disk = disk; self.net = net }

    init(_ limits: Sandbox.Limits) {
        disk = limits.disk.isUnlimited ? nil : DeviceLimitBody(limits.disk)
        net = limits.net.isUnlimited ? nil : DeviceLimitBody(limits.net)
    }

    init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, CodingKeys.allCases.map(\.rawValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        disk = try c.decodeIfPresent(DeviceLimitBody.self, forKey: .disk)
        net = try c.decodeIfPresent(DeviceLimitBody.self, forKey: .net)
    }

    /// The limits a sandbox runs with: what it asked for within the operator's (nil: the
    /// operator's, which nil leaves to the template's own). A NIC's limit needs a network.
    static func effective(asked: RateLimitsBody?, ceiling: Sandbox.Limits?, networked: Bool) throws(APIError) -> Sandbox.Limits? {
        guard let asked else { return ceiling.map { networked ? $0 : Sandbox.Limits(disk: $0.disk) } }
        if asked.net != nil && !networked {
            throw APIError(400, "rateLimits.net limits the network device: the sandbox has none (create with allow_internet_access or network)")
        }
        let ceiling = ceiling ?? Sandbox.Limits()
        var limits = Sandbox.Limits()
        limits.disk = try within(asked.disk.map { (b) throws(APIError) in try b.limit("rateLimits.disk") }, ceiling.disk, "rateLimits.disk")
        if networked {
            limits.net = try within(asked.net.map { (b) throws(APIError) in try b.limit("rateLimits.net") }, ceiling.net, "rateLimits.net")
        }
        return limits
    }

    /// The asked limit where the operator's has no bucket of that kind; refused where it would
    /// allow more than the operator's in some window: a higher rate, a larger bucket (what an
    /// idle sandbox may spend at once) or more tokens at the start (bucket and one-time burst).
    /// Both are valid limits here (sizes at most 2^50: the sums do not overflow).
    static func within(_ asked: RateLimit?, _ ceiling: RateLimit, _ field: String) throws(APIError) -> RateLimit {
        guard let asked else { return ceiling }
        func bucket(_ a: TokenBucket.Limit?, _ c: TokenBucket.Limit?, _ name: String) throws(APIError) -> TokenBucket.Limit? {
            guard let a else { return c }
            guard let c else { return a }
            // a.size/a.refill <= c.size/c.refill, cross-multiplied at full width (2^50 × a day's ms overflows 64 bits).
            let (ah, al) = a.size.multipliedFullWidth(by: c.refillMilliseconds)
            let (ch, cl) = c.size.multipliedFullWidth(by: a.refillMilliseconds)
            let rateOK = (ah, al) <= (ch, cl)
            guard rateOK, a.size <= c.size, a.size + a.oneTimeBurst <= c.size + c.oneTimeBurst else {
                throw APIError(400, "\(field).\(name) allows more than this service's limit (size \(c.size) per \(c.refillMilliseconds) ms, "
                    + "oneTimeBurst \(c.oneTimeBurst)): a sandbox may only be limited further")
            }
            return a
        }
        return RateLimit(bandwidth: try bucket(asked.bandwidth, ceiling.bandwidth, "bandwidth"),
                         operations: try bucket(asked.operations, ceiling.operations, "ops"))
    }
}

/// Refuses a JSON object with a key the type does not have: a misspelt limit is an error, not
/// an unlimited sandbox.
enum StrictKeys {
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    static func check(_ decoder: any Decoder, _ known: [String]) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        if let unknown = c.allKeys.first(where: { !known.contains($0.stringValue) }) {
            throw DecodingError.dataCorruptedError(forKey: unknown, in: c,
                                                   debugDescription: "unknown field (known: \(known.joined(separator: ", ")))")
        }
    }
}
