import Synchronization

/// The service's counters, served as Prometheus text at `GET /metrics`.
public final class Metrics: Sendable {
    struct State {
        var sandboxes: [String: [String: Int]] = [:]
        var create = Histogram()
        /// From a create request's arrival to the manager starting on it: the queue in front of the
        /// manager actor, which every create goes through.
        var createWait = Histogram()
        /// Request to response end, per route.
        var requestSeconds: [String: Histogram] = [:]
        var errors: [String: Int] = [:]
        var requests: [String: Int] = [:]
        /// Warm pools: ready sandboxes per template, and creates served from a pool or not.
        var pooled: [String: Int] = [:]
        var poolCreates: [String: (hit: Int, miss: Int)] = [:]
    }
    let state = Mutex(State())
    static let bounds: [Double] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    public init() {}

    func setSandboxes(_ counts: [String: [String: Int]]) { state.withLock { $0.sandboxes = counts } }

    struct Histogram {
        var buckets = [Int](repeating: 0, count: Metrics.bounds.count)
        var count = 0
        var sum = 0.0

        mutating func observe(_ seconds: Double) {
            count += 1
            sum += seconds
            for (i, b) in Metrics.bounds.enumerated() where seconds <= b { buckets[i] += 1 }
        }

        /// Prometheus text for metric `name`; `labels` is either empty or `key="value"` pairs joined by commas.
        func render(_ name: String, labels: String = "") -> String {
            let sep = labels.isEmpty ? "" : ","
            var out = ""
            for (i, b) in Metrics.bounds.enumerated() { out += "\(name)_bucket{\(labels)\(sep)le=\"\(b)\"} \(buckets[i])\n" }
            out += "\(name)_bucket{\(labels)\(sep)le=\"+Inf\"} \(count)\n"
            let braces = labels.isEmpty ? "" : "{\(labels)}"
            return out + "\(name)_sum\(braces) \(sum)\n\(name)_count\(braces) \(count)\n"
        }
    }

    func observeCreate(seconds: Double, waited: Double) {
        state.withLock { s in
            s.create.observe(seconds)
            s.createWait.observe(waited)
        }
    }

    func observe(request route: String, seconds: Double) {
        state.withLock { $0.requestSeconds[route, default: Histogram()].observe(seconds) }
    }

    func setPooled(_ counts: [String: Int]) { state.withLock { $0.pooled = counts } }
    func count(poolCreate template: String, hit: Bool) {
        state.withLock { s in
            if hit { s.poolCreates[template, default: (0, 0)].hit += 1 } else { s.poolCreates[template, default: (0, 0)].miss += 1 }
        }
    }

    /// A Prometheus label value (template ids may hold `"` and `\`).
    static func label(_ v: String) -> String {
        var out = ""
        for c in v { if c == "\\" || c == "\"" { out.append("\\") }; out.append(c) }
        return out
    }

    func count(error kind: String) { state.withLock { $0.errors[kind, default: 0] += 1 } }
    func count(request route: String, status: Int) { state.withLock { $0.requests["\(route)|\(status)", default: 0] += 1 } }

    public func render() -> String {
        state.withLock { s in
            var out = "# HELP kiln_sandboxes Sandboxes by tenant and state.\n# TYPE kiln_sandboxes gauge\n"
            for (tenant, states) in s.sandboxes.sorted(by: { $0.key < $1.key }) {
                for (state, n) in states.sorted(by: { $0.key < $1.key }) { out += "kiln_sandboxes{tenant=\"\(tenant)\",state=\"\(state)\"} \(n)\n" }
            }
            out += "# HELP kiln_sandbox_create_seconds Time to create a sandbox, request to running.\n# TYPE kiln_sandbox_create_seconds histogram\n"
            out += s.create.render("kiln_sandbox_create_seconds")
            out += "# HELP kiln_sandbox_create_wait_seconds Time a create waited for the sandbox manager before it started.\n# TYPE kiln_sandbox_create_wait_seconds histogram\n"
            out += s.createWait.render("kiln_sandbox_create_wait_seconds")
            out += "# HELP kiln_api_request_seconds Control API requests, arrival to the end of the response, by route.\n# TYPE kiln_api_request_seconds histogram\n"
            for (route, h) in s.requestSeconds.sorted(by: { $0.key < $1.key }) { out += h.render("kiln_api_request_seconds", labels: "route=\"\(Metrics.label(route))\"") }
            out += "# HELP kiln_api_errors_total API errors by kind.\n# TYPE kiln_api_errors_total counter\n"
            for (k, n) in s.errors.sorted(by: { $0.key < $1.key }) { out += "kiln_api_errors_total{kind=\"\(k)\"} \(n)\n" }
            out += "# HELP kiln_api_requests_total API requests by route and status.\n# TYPE kiln_api_requests_total counter\n"
            for (k, n) in s.requests.sorted(by: { $0.key < $1.key }) {
                let parts = k.split(separator: "|")
                out += "kiln_api_requests_total{route=\"\(parts[0])\",status=\"\(parts[1])\"} \(n)\n"
            }
            out += "# HELP kiln_pool_sandboxes Restored sandboxes ready in a template's warm pool (no tenant's).\n# TYPE kiln_pool_sandboxes gauge\n"
            for (t, n) in s.pooled.sorted(by: { $0.key < $1.key }) { out += "kiln_pool_sandboxes{template=\"\(Metrics.label(t))\"} \(n)\n" }
            out += "# HELP kiln_pool_creates_total Creates of a pooled template, served from the pool (hit) or restored (miss).\n# TYPE kiln_pool_creates_total counter\n"
            for (t, n) in s.poolCreates.sorted(by: { $0.key < $1.key }) {
                out += "kiln_pool_creates_total{template=\"\(Metrics.label(t))\",result=\"hit\"} \(n.hit)\n"
                out += "kiln_pool_creates_total{template=\"\(Metrics.label(t))\",result=\"miss\"} \(n.miss)\n"
            }
            return out
        }
    }
}
