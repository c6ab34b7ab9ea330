import Glibc
import LinuxSys
import Sandbox

/// Warm pools (docs/service.md, "Warm pools"): per template, a few sandboxes restored ahead of
/// any request, so that a create hands one out instead of restoring. A pooled sandbox has no
/// identity yet: no id, tenant, metadata, env vars or timeout; it gets them, and the host's
/// clock and fresh entropy, only when a create takes it.
public struct PoolSettings: Sendable {
    /// Ready sandboxes per template, for a template without its own count (`kiln serve --warm N`).
    /// One covers the common case of creates one after another at no more than one idle
    /// sandbox's cost per template used (about half a percent of a core and a few MiB here).
    public var defaultSize = 1
    /// Counts for named templates (`--warm TEMPLATE=N`); these pools fill at start, the others
    /// at their template's first create.
    public var sizes: [String: Int] = [:]
    /// Below this much MemAvailable the pools stop refilling and drop what they hold.
    public var minAvailableMiB = 1024
    public init() {}

    func size(_ template: String) -> Int { max(0, sizes[template] ?? defaultSize) }
}

/// One template's pool; confined to the `SandboxManager` actor.
final class WarmPool: @unchecked Sendable {
    struct Member {
        let sandbox: Sandbox
        /// The template's snapshot directory it was restored from: a rebuilt template makes it stale.
        let snapshot: String
    }
    var ready: [Member] = []
    /// The refill under way: one restore at a time per template.
    var refill: Task<Void, Never>?
    /// After a failed restore the pool waits before it tries again (doubling, up to a minute).
    var notBefore = 0.0
    var failures = 0
}

extension SandboxManager {
    /// Starts filling the pools the settings name.
    public func startPools() {
        for (template, n) in settings.pool.sizes where n > 0 { fillPool(template) }
    }

    /// Starts a refill of `template`'s pool (making the pool first) unless one runs, the pool is
    /// full, memory is short, the last restore failed recently, or the service is stopping.
    func fillPool(_ template: String) {
        guard !stopping, settings.pool.size(template) > 0 else { return }
        let pool = pools[template] ?? WarmPool()
        pools[template] = pool
        guard pool.refill == nil, pool.ready.count < settings.pool.size(template), Timestamps.now() >= pool.notBefore,
              !memoryIsShort() else { return }
        pool.refill = Task(executorPreference: BlockingExecutor.service) { await self.refill(template, pool) }
    }

    private func refill(_ template: String, _ pool: WarmPool) async {
        defer {
            pool.refill = nil
            updatePoolGauge()
        }
        let settings = self.settings, vms = vmsDirectory
        while !stopping, pool.ready.count < settings.pool.size(template), !memoryIsShort() {
            do {
                let snapshot = try await resolveTemplate(template)
                let sandbox = try await blocking.run {
                    try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: vms, hostProfile: settings.hostProfile,
                                              isolation: settings.isolation, lifetime: settings.lifetime,
                                              consoleLimit: settings.consoleLimit, limits: settings.limits(networked: false))
                }
                if stopping {
                    _ = try? await blocking.run { sandbox.stop() }
                    return
                }
                sandbox.parkWhenIdle(after: settings.idlePause) // a pool member waits parked; hand-out resumes it
                pool.ready.append(WarmPool.Member(sandbox: sandbox, snapshot: snapshot))
                pool.failures = 0
                updatePoolGauge()
            } catch {
                pool.failures += 1
                let wait = min(60, Double(1 << min(pool.failures, 6)))
                pool.notBefore = Timestamps.now() + wait
                logger.warning("warm pool of template \(template): restore failed (\(error)); next try in \(Int(wait)) s")
                return
            }
        }
    }

    /// A ready sandbox of `template` restored from `snapshot` with its identity given: the id,
    /// the env vars, the host's clock and fresh entropy (SetTime and Reseed in one write: a
    /// sandbox that waited has a stale clock and shares its entropy with nobody yet, but must
    /// not keep what the pool gave it). Nil when the pool has none usable; a refill starts.
    func handOutPooled(_ template: String, snapshot: String, id: String, envVars: [String: String]) async -> ServiceSandbox? {
        guard settings.pool.size(template) > 0 else { return nil }
        defer { fillPool(template) }
        guard let pool = pools[template] else {
            metrics.count(poolCreate: template, hit: false)
            return nil
        }
        while !pool.ready.isEmpty {
            let member = pool.ready.removeFirst()
            updatePoolGauge()
            guard member.snapshot == snapshot, member.sandbox.ended == nil else {
                discard(member.sandbox, template, why: member.snapshot == snapshot ? "its VM ended" : "the template changed")
                continue
            }
            // Sent, not waited for: the agent handles frames in order, so the tenant's first
            // request already finds them done (the round trip to an emulated guest is most of
            // a hand-out's time). A guest that refuses them is reported and then killed.
            let logger = self.logger, sandbox = member.sandbox
            // A parked member is resumed on a blocking thread: resumed by the send below it would
            // hold this actor for the VMM round trip, and concurrent hand-outs would queue on it.
            if sandbox.isParked { _ = try? await blocking.run { sandbox.wake() } }
            do {
                try sandbox.agent.sendTimeAndReseed(Random.bytes(64)) { result in
                    switch result {
                    case .success(0): return
                    case .success(let e): logger.error("sandbox \(id) from the warm pool of \(template) refused new entropy (errno \(e)): stopping it")
                    // Also a kill right after the create, before the answer came: stop() is then a no-op.
                    case .failure(let error): logger.info("sandbox \(id) from the warm pool of \(template): its agent connection ended before the clock and entropy were answered (\(error))")
                    }
                    _ = sandbox.stop()
                }
            } catch {
                discard(member.sandbox, template, why: "it did not take the clock and entropy (\(error))")
                continue
            }
            metrics.count(poolCreate: template, hit: true)
            // A template's snapshot has no kept processes, so there is nothing to reattach.
            return ServiceSandbox(id: id, sandbox: member.sandbox, envVars: envVars,
                                  image: try? Templates.imageConfig(snapshotDirectory: snapshot), blocking: blocking)
        }
        metrics.count(poolCreate: template, hit: false)
        return nil
    }

    /// Called by the timeout sweep: drops dead members, empties the pools while memory is short,
    /// and restarts refills that are due.
    func maintainPools() {
        guard !stopping else { return }
        let short = memoryIsShort()
        for (template, pool) in pools {
            let keep = pool.ready.filter { !short && $0.sandbox.ended == nil }
            for member in pool.ready where short || member.sandbox.ended != nil {
                discard(member.sandbox, template, why: short ? "memory is short (MemAvailable under \(settings.pool.minAvailableMiB) MiB)" : "its VM ended")
            }
            if keep.count != pool.ready.count {
                pool.ready = keep
                updatePoolGauge()
            }
            if !short { fillPool(template) }
        }
    }

    /// Stops every pooled sandbox, after the refills under way have ended.
    func stopPools() async {
        stopping = true
        for pool in pools.values { await pool.refill?.value }
        for pool in pools.values {
            let members = pool.ready
            pool.ready = []
            for m in members { _ = try? await blocking.run { m.sandbox.stop() } }
        }
        updatePoolGauge()
    }

    func discard(_ sandbox: Sandbox, _ template: String, why: String) {
        logger.info("warm pool of template \(template): dropping a sandbox: \(why)")
        let blocking = self.blocking
        Task(executorPreference: BlockingExecutor.service) { _ = try? await blocking.run { sandbox.stop() } }
    }

    func updatePoolGauge() {
        metrics.setPooled(pools.mapValues(\.ready.count))
    }

    /// Whether MemAvailable (/proc/meminfo) is under the pools' threshold.
    nonisolated func memoryIsShort() -> Bool {
        guard let bytes = try? FileIO.read("/proc/meminfo") else { return false }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kiB = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return false }
        return kiB < settings.pool.minAvailableMiB * 1024
    }
}
