import LinuxSys
import Synchronization

/// Nanoseconds on a monotonic clock. Devices read `monotonicNanoseconds`; tests pass a fake one.
public typealias RateClock = @Sendable () -> UInt64

/// A token bucket as Firecracker's rate limiter defines it (docs/net.md, "Rate limits"): it holds
/// at most `size` tokens and starts full; it refills continuously, `size` tokens per `refillTime`;
/// `oneTimeBurst` extra tokens are spent first and never come back.
///
/// A request larger than `size` could never fit: it passes when the bucket is full and leaves the
/// bucket in debt (negative), which the refill pays off before anything else passes. The average
/// rate then holds for any request size, and the guest's request still completes.
public struct TokenBucket: Sendable, Equatable {
    /// What a user sets: sizes in tokens (bytes or operations), the refill time in milliseconds.
    public struct Limit: Sendable, Equatable {
        public var size: UInt64
        public var oneTimeBurst: UInt64
        public var refillMilliseconds: UInt64
        public init(size: UInt64, oneTimeBurst: UInt64 = 0, refillMilliseconds: UInt64 = 1000) {
            self.size = size; self.oneTimeBurst = oneTimeBurst; self.refillMilliseconds = refillMilliseconds
        }
        /// Sizes up to 2^50 (a PiB per refill) keep every sum below Int64's range.
        public static let maximumSize: UInt64 = 1 << 50
        /// One day.
        public static let maximumRefillMilliseconds: UInt64 = 86_400_000
        public var isValid: Bool {
            (1...Self.maximumSize).contains(size) && oneTimeBurst <= Self.maximumSize
                && (1...Self.maximumRefillMilliseconds).contains(refillMilliseconds)
        }
    }

    public let limit: Limit
    /// Tokens available; below zero after an oversized request (a debt).
    public private(set) var budget: Int64
    public private(set) var burst: UInt64
    /// When the budget was last brought up to date.
    private var updated: UInt64
    /// Refill progress below one token, in token-nanoseconds (< refill time in ns).
    private var partial: UInt64 = 0
    private var refillNanoseconds: UInt64 { limit.refillMilliseconds * 1_000_000 }

    public init(_ limit: Limit, now: UInt64) {
        precondition(limit.isValid, "an invalid bucket limit")
        self.limit = limit
        budget = Int64(limit.size)
        burst = limit.oneTimeBurst
        updated = now
    }

    var isFull: Bool { budget >= Int64(limit.size) }

    /// Adds the tokens earned since the last update, up to `size`.
    public mutating func refill(now: UInt64) {
        defer { updated = max(updated, now) }
        guard now > updated, !isFull else { partial = isFull ? 0 : partial; return }
        // (elapsed * size + partial) / refill, in 128 bits: an hour of nanoseconds times a large size overflows 64.
        var product = (now - updated).multipliedFullWidth(by: limit.size)
        let (low, carry) = product.low.addingReportingOverflow(partial)
        product.low = low
        if carry { product.high += 1 }
        let missing = UInt64(Int64(limit.size) - budget)
        guard product.high < refillNanoseconds else { budget = Int64(limit.size); partial = 0; return }
        let (tokens, rest) = refillNanoseconds.dividingFullWidth((product.high, product.low))
        if tokens >= missing {
            budget = Int64(limit.size); partial = 0
        } else {
            budget += Int64(tokens); partial = rest
        }
    }

    /// Whether `tokens` can be taken now (after `refill`).
    public func allows(_ tokens: UInt64) -> Bool {
        if tokens <= burst { return true }
        let fromBudget = tokens - burst
        return budget >= 0 && fromBudget <= UInt64(budget) || (fromBudget > limit.size && isFull)
    }

    /// Takes `tokens`, burst first; call only when `allows(tokens)`.
    public mutating func take(_ tokens: UInt64) {
        let fromBurst = min(burst, tokens)
        burst -= fromBurst
        budget -= Int64(tokens - fromBurst)
    }

    /// Nanoseconds until `allows(tokens)` holds, if nothing else is taken; 0 when it holds now.
    public func wait(for tokens: UInt64) -> UInt64 {
        guard !allows(tokens) else { return 0 }
        let fromBudget = tokens - burst
        // An oversized request waits for a full bucket; any other for its own size.
        let target = Int64(min(fromBudget, limit.size))
        let deficit = UInt64(target - budget)
        // Smallest t with t * size + partial >= deficit * refill.
        let needed = deficit.multipliedFullWidth(by: refillNanoseconds)
        let (low, borrow) = needed.low.subtractingReportingOverflow(partial)
        let numerator = (high: needed.high - (borrow ? 1 : 0), low: low)
        guard numerator.high < limit.size else { return UInt64.max }
        let (q, r) = limit.size.dividingFullWidth(numerator)
        return r == 0 || q == .max ? q : q + 1
    }
}

/// The limits of one device queue (one direction of a NIC, a disk): a bandwidth bucket in bytes and
/// an operations bucket in requests, either or both. An empty value limits nothing.
public struct RateLimit: Sendable, Equatable {
    public var bandwidth: TokenBucket.Limit?
    public var operations: TokenBucket.Limit?
    public init(bandwidth: TokenBucket.Limit? = nil, operations: TokenBucket.Limit? = nil) {
        self.bandwidth = bandwidth; self.operations = operations
    }
    public static let unlimited = RateLimit()
    public var isUnlimited: Bool { bandwidth == nil && operations == nil }
}

/// The buckets of one `RateLimit`, shared by the threads that take from them. A request takes
/// from both buckets or from neither, so that a refused request can be retried whole.
public final class RateLimiter: Sendable {
    public let limit: RateLimit
    private let clock: RateClock
    private let buckets: Mutex<(bandwidth: TokenBucket?, operations: TokenBucket?)>

    public init(_ limit: RateLimit, clock: @escaping RateClock = monotonicNanoseconds) {
        self.limit = limit
        self.clock = clock
        let now = clock()
        buckets = Mutex((limit.bandwidth.map { TokenBucket($0, now: now) }, limit.operations.map { TokenBucket($0, now: now) }))
    }

    /// Takes `bytes` and one operation if both buckets allow it and returns nil; otherwise takes
    /// nothing and returns the nanoseconds until they would.
    public func consume(bytes: UInt64, operations: UInt64 = 1) -> UInt64? {
        let now = clock()
        return buckets.withLock { b in
            b.bandwidth?.refill(now: now)
            b.operations?.refill(now: now)
            let wait = max(b.bandwidth?.wait(for: bytes) ?? 0, b.operations?.wait(for: operations) ?? 0)
            guard wait == 0 else { return wait }
            b.bandwidth?.take(bytes)
            b.operations?.take(operations)
            return nil
        }
    }
}

/// A rate-limited queue's limiter and the timer that wakes its device when the tokens are back.
/// The device registers `timer.fd` with its event loop; while a request is refused the device
/// takes nothing more from that queue (the others go on) and resumes when the timer fires.
public final class Throttle: Sendable {
    public let limiter: RateLimiter
    public let timer: OneShotTimer

    /// nil for an unlimited queue: no timer, nothing to check.
    public init?(_ limit: RateLimit, clock: @escaping RateClock = monotonicNanoseconds) throws(Errno) {
        guard !limit.isUnlimited else { return nil }
        limiter = RateLimiter(limit, clock: clock)
        timer = try OneShotTimer()
    }

    /// Takes a request of `bytes` and returns true, or arms the timer for when it would pass.
    public func admit(bytes: UInt64) -> Bool {
        guard let wait = limiter.consume(bytes: bytes) else { return true }
        timer.arm(after: wait)
        return false
    }
}
