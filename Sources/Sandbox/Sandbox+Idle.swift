import AgentProtocol
import Glibc
import LinuxSys
import Synchronization

/// Idle parking: a sandbox nobody has talked to for a while has its vCPUs and device thread
/// parked by the host (the VMM's pause), so its guest's timers and wake-ups cost no host CPU;
/// the next frame sent to its agent resumes it first, so callers see nothing but that resume.
/// The guest's clocks run on while it is parked (kvmclock follows the host's TSC): on resume its
/// timers that fell due fire at once, late, and its wall clock is right. docs/benchmarks.md, "Idle".
extension Sandbox {
    /// Parks the VM once nobody has talked to its agent for `seconds` (no frame sent or received)
    /// and no operation waits on it (`AgentClient.isQuiescent`: a running command is never parked).
    /// Nil (the default) turns it off and resumes a parked VM.
    public func parkWhenIdle(after seconds: Double?) {
        idle.setDelay(seconds.map { max(0, $0) })
        if seconds == nil { idle.unpark() } else { IdleReaper.shared.watch(self) }
    }

    /// Parks the VM now (whatever its agent is doing); the next frame sent to the agent resumes it.
    public func park() throws(SandboxError) { try idle.park(agent: agent, force: true) }

    /// Resumes a parked VM now (a blocking round trip to the VMM; call it off the cooperative
    /// threads when many may wait), as the next frame to the agent would.
    public func wake() { idle.unpark() }

    /// Whether the VM is parked now.
    public var isParked: Bool { idle.isParked }

    /// How often the VM was parked and resumed by idle parking.
    public var parkings: (parks: Int, resumes: Int) { idle.counts }
}

/// One sandbox's parking state. The send path and the reaper meet here without a lock on the
/// hot path: a sender stores the agent's activity time, then reads `parkedFlag`; the reaper
/// reads the activity, pauses, sets `parkedFlag`, then reads the activity again and resumes if it
/// moved. With sequentially consistent atomics one of the two always sees the other.
final class IdleParking: Sendable {
    let host: any VMHost
    private let parkedFlag = Atomic<Bool>(false)
    private let state = Mutex(State())

    struct State {
        var delay: Double?
        var parked = false
        /// The sandbox stopped, or its agent was told to shut down: never park again.
        var ended = false
        var parks = 0
        var resumes = 0
    }

    init(host: any VMHost) { self.host = host }

    var isParked: Bool { parkedFlag.load(ordering: .sequentiallyConsistent) }
    var counts: (parks: Int, resumes: Int) { state.withLock { ($0.parks, $0.resumes) } }
    var delay: Double? { state.withLock { $0.ended ? nil : $0.delay } }

    func setDelay(_ seconds: Double?) { state.withLock { $0.delay = seconds } }

    /// Runs on the agent client's writing thread before every write.
    func willSend(_ frames: [Frame]) {
        if frames.contains(where: { if case .shutdown = $0.message { true } else { false } }) {
            state.withLock { $0.ended = true } // a VM shutting down must finish doing so
        }
        if parkedFlag.load(ordering: .sequentiallyConsistent) { unpark() }
    }

    func unpark() {
        let resumed = state.withLock { s -> Bool in
            guard s.parked else { return false }
            // A VM that has gone cannot be resumed; the write that follows reports the loss.
            try? host.resume()
            s.parked = false
            s.resumes += 1
            parkedFlag.store(false, ordering: .sequentiallyConsistent)
            return true
        }
        if resumed { IdleReaper.shared.kick() } // to park it again once it is idle again
    }

    func end() {
        state.withLock { $0.ended = true }
    }

    /// Parks when idle long enough (or at once with `force`). Returns when to look again
    /// (CLOCK_MONOTONIC ns), nil when there is nothing to watch until the sandbox is used.
    @discardableResult
    func check(agent: AgentClient, now: UInt64) -> UInt64? {
        let delay = state.withLock { s in s.ended || s.parked ? nil : s.delay }
        guard let delay else { return nil }
        let due = agent.lastActivity &+ UInt64(delay * 1e9)
        if now < due { return due }
        guard agent.isQuiescent else { return now + UInt64(max(1, delay) * 1e9) }
        do { try park(agent: agent, force: false) } catch { return now + UInt64(max(1, delay) * 1e9) }
        return isParked ? nil : now + UInt64(max(0.1, delay) * 1e9)
    }

    func park(agent: AgentClient, force: Bool) throws(SandboxError) {
        try state.withLock { s throws(SandboxError) in
            guard !s.parked, !s.ended, host.ended == nil else { return }
            let seen = agent.lastActivity
            if !force, let delay = s.delay, AgentClient.monotonicNanos() < seen &+ UInt64(delay * 1e9) { return }
            try host.pause()
            s.parked = true
            parkedFlag.store(true, ordering: .sequentiallyConsistent)
            if agent.lastActivity != seen {
                // Someone sent while the VM was pausing: it must see the frame.
                try? host.resume()
                s.parked = false
                parkedFlag.store(false, ordering: .sequentiallyConsistent)
                return
            }
            s.parks += 1
        }
    }
}

/// The one thread per process that parks idle sandboxes: it sleeps until the earliest moment a
/// watched sandbox may become idle, so a thousand idle sandboxes cost one sleeping thread.
final class IdleReaper: Sendable {
    static let shared = IdleReaper()

    private struct Watched { weak var sandbox: Sandbox? }
    private let watched = Mutex<[ObjectIdentifier: Watched]>([:])
    private let started = Mutex(false)
    private let wake: Int32

    init() { wake = (try? EventFD(nonBlocking: true))?.release() ?? -1 }

    func watch(_ sandbox: Sandbox) {
        watched.withLock { $0[ObjectIdentifier(sandbox)] = Watched(sandbox: sandbox) }
        let start = started.withLock { s in defer { s = true }; return !s }
        if start, wake >= 0 {
            _ = try? LinuxSys.Thread.spawn(name: "kiln-idle") { [self] in run() }
        }
        kick()
    }

    func forget(_ sandbox: Sandbox) {
        _ = watched.withLock { $0.removeValue(forKey: ObjectIdentifier(sandbox)) }
    }

    /// Wakes the thread to look again (a sandbox was added, or used after being parked).
    func kick() {
        guard started.withLock({ $0 }) else { return }
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }

    private func run() {
        var fds = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            let now = AgentClient.monotonicNanos()
            var next: UInt64?
            var gone: [ObjectIdentifier] = []
            for (key, entry) in watched.withLock({ $0 }) {
                guard let sandbox = entry.sandbox else { gone.append(key); continue }
                // Nil: parked or off; an unpark kicks this thread to look again.
                if let due = sandbox.idle.check(agent: sandbox.agent, now: now) { next = min(next ?? due, due) }
            }
            if !gone.isEmpty { watched.withLock { w in for k in gone { w.removeValue(forKey: k) } } }
            let timeout = next.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            _ = poll(&fds, 1, timeout)
            var value: UInt64 = 0
            _ = Glibc.read(wake, &value, 8)
        }
    }
}
