import Devices

/// The text form of a rate limit (docs/net.md, "Rate limits"): inside a `--disk`/`--net` spec
/// (and a snapshot's CONF section) as keys among the spec's other options, and alone as
/// `BYTES_PER_S[,ops=N][,burst=BYTES][,ops-burst=N]` (`kiln run --disk-rate/--net-rate`).
/// Sizes take K, M or G (powers of 1024). A bucket refills its size in `*-refill-ms`
/// milliseconds, one second unless given: the size is then a per-second rate.
public struct RateLimitOptions: Sendable, Equatable {
    var rate: UInt64?, ops: UInt64?, burst: UInt64?, opsBurst: UInt64?
    var rateRefill: UInt64?, opsRefill: UInt64?

    public init() {}

    public static let keys: Set<String> = ["rate", "ops", "burst", "ops-burst", "rate-refill-ms", "ops-refill-ms"]

    /// Takes one `key=value` of a spec; false when the value is not a size.
    mutating func take(_ key: String, _ value: String) -> Bool {
        guard let n = RateLimitOptions.amount(value) else { return false }
        switch key {
        case "rate": rate = n
        case "ops": ops = n
        case "burst": burst = n
        case "ops-burst": opsBurst = n
        case "rate-refill-ms": rateRefill = n
        case "ops-refill-ms": opsRefill = n
        default: return false
        }
        return true
    }

    /// The limit, or nil when a bucket is out of range or a burst or refill has no bucket.
    var limit: RateLimit? {
        func bucket(_ size: UInt64?, _ burst: UInt64?, _ refill: UInt64?) -> TokenBucket.Limit?? {
            guard let size else { return burst == nil && refill == nil ? .some(nil) : nil }
            let b = TokenBucket.Limit(size: size, oneTimeBurst: burst ?? 0, refillMilliseconds: refill ?? 1000)
            return b.isValid ? .some(b) : nil
        }
        guard let bandwidth = bucket(rate, burst, rateRefill), let operations = bucket(ops, opsBurst, opsRefill) else { return nil }
        return RateLimit(bandwidth: bandwidth, operations: operations)
    }

    /// `BYTES_PER_S[,ops=N][,burst=BYTES][,ops-burst=N]`: `rate=` may be left out of the first
    /// item; `0` alone means unlimited (a restored clone dropping its template's limit).
    public static func parse(_ text: String) -> RateLimit? {
        if text == "0" { return .unlimited }
        var o = RateLimitOptions()
        for (i, item) in text.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let (key, value) = kv.count == 2 ? (kv[0], kv[1]) : (i == 0 ? "rate" : "", kv[0])
            guard keys.contains(key), o.take(key, value) else { return nil }
        }
        guard let limit = o.limit, !limit.isUnlimited else { return nil }
        return limit
    }

    /// A size: digits with an optional K, M or G (KiB, MiB, GiB).
    static func amount(_ text: String) -> UInt64? {
        var digits = Substring(text), shift: UInt64 = 0
        switch text.last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        default: break
        }
        if shift > 0 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let n = UInt64(digits), n <= UInt64.max >> shift else { return nil }
        return n << shift
    }
}

extension RateLimit {
    /// The spec options that parse back to this limit (none when unlimited).
    var specOptions: [String] {
        var parts: [String] = []
        if let b = bandwidth {
            parts.append("rate=\(b.size)")
            if b.oneTimeBurst > 0 { parts.append("burst=\(b.oneTimeBurst)") }
            if b.refillMilliseconds != 1000 { parts.append("rate-refill-ms=\(b.refillMilliseconds)") }
        }
        if let o = operations {
            parts.append("ops=\(o.size)")
            if o.oneTimeBurst > 0 { parts.append("ops-burst=\(o.oneTimeBurst)") }
            if o.refillMilliseconds != 1000 { parts.append("ops-refill-ms=\(o.refillMilliseconds)") }
        }
        return parts
    }

    /// `BYTES_PER_S[,ops=N]...` as `--disk-rate` takes it.
    public var text: String { isUnlimited ? "0" : specOptions.joined(separator: ",") }
}
