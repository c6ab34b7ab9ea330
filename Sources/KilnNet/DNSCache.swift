import Glibc
import Synchronization

/// The egress helper's answers from upstream, kept for their TTL by question (the name in lower
/// case, the type): a guest that looks a name up again (a package manager does, for every
/// download), and the proxy dialling a name the guest has just resolved, do not ask upstream
/// again. What is kept is the upstream's answer as it came; the policy is applied to what comes
/// out (EgressHelper.answer), so a policy changed live applies to cached answers at once.
///
/// Kept: an answer with records, for its records' smallest TTL and at most `maxTTL`; an answer
/// with none (NXDOMAIN, or no data of that type) for `negativeTTL` (RFC 2308 would take the
/// zone's SOA minimum, which Kiln does not read). Not kept: SERVFAIL and other failures, a
/// truncated answer, a TTL of 0. The records come back with their TTLs lowered by the time they
/// were kept. At most `capacity` questions: when full, expired ones go, then those closest to
/// expiring. One cache per helper, so per sandbox: nothing one guest asked is seen by another.
public final class DNSCache: Sendable {
    public static let maxTTL: UInt32 = 300
    public static let negativeTTL: UInt32 = 30

    struct Key: Hashable {
        let labels: [[UInt8]]
        let type: UInt16
    }
    struct Entry {
        let response: DNS.Response
        let stored: Double
        let expires: Double
    }

    let capacity: Int
    let clock: @Sendable () -> Double
    private let entries = Mutex<[Key: Entry]>([:])

    public init(capacity: Int = 1024, clock: @escaping @Sendable () -> Double = DNSCache.monotonicSeconds) {
        self.capacity = max(1, capacity)
        self.clock = clock
    }

    public static func monotonicSeconds() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// How many questions are kept (expired ones included until they are looked up or pushed out).
    public var count: Int { entries.withLock { $0.count } }

    /// The kept answer to `labels`/`type`, its TTLs lowered by its age; nil when none is kept or it expired.
    public func lookup(labels: [[UInt8]], type: UInt16) -> DNS.Response? {
        let key = Key(labels: DNS.lower(labels), type: type), now = clock()
        return entries.withLock { e -> DNS.Response? in
            guard let entry = e[key] else { return nil }
            guard now < entry.expires else {
                e[key] = nil
                return nil
            }
            let age = UInt32(min(Double(UInt32.max), max(0, now - entry.stored)))
            var response = entry.response
            response.answers = response.answers.map { r in
                var r = r
                r.ttl = r.ttl > age ? r.ttl - age : 0
                return r
            }
            return response
        }
    }

    /// Keeps upstream's `response` to `labels`/`type`, if it is one to keep (see the type's note).
    public func store(labels: [[UInt8]], type: UInt16, _ response: DNS.Response) {
        guard !response.truncated else { return }
        let ttl: UInt32
        switch response.rcode {
        case DNS.noError where !response.answers.isEmpty:
            guard let smallest = response.answers.map(\.ttl).min(), smallest > 0 else { return }
            ttl = min(smallest, Self.maxTTL)
        case DNS.noError, DNS.nameError:
            ttl = Self.negativeTTL
        default:
            return
        }
        let key = Key(labels: DNS.lower(labels), type: type), now = clock()
        entries.withLock { e in
            e[key] = Entry(response: response, stored: now, expires: now + Double(ttl))
            guard e.count > capacity else { return }
            for (k, v) in e where v.expires <= now { e[k] = nil }
            while e.count > capacity, let soonest = e.min(by: { $0.value.expires < $1.value.expires })?.key { e[soonest] = nil }
        }
    }
}
