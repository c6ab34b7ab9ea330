import CLinux
import Glibc
import Seccomp
import Synchronization

/// The seccomp side of a Machine: every thread installs its own kind's filter at the start of its
/// body, and the vCPUs wait at a gate until all threads, the one calling run() last, are filtered,
/// so no guest instruction runs while any VMM thread is unconfined.
final class Confinement: Sendable {
    let filters: SeccompFilters
    private let failure = Mutex<String?>(nil)
    private let gate = Gate()

    init(_ mode: SeccompMode) throws(MachineError) {
        do { filters = try SeccompFilters(mode: mode) } catch { throw .config(error.description) }
        // An uncapped malloc counts the CPUs (opening /sys/devices/system/cpu/online, then
        // sched_getaffinity) once a ninth thread allocates: with many vCPUs the filtered threads
        // would be killed for it. Capped before any of them starts, malloc never asks.
        _ = kiln_malloc_arena_max(8)
    }

    /// The first filter that failed to install, if any.
    var failed: String? { failure.withLock { $0 } }

    /// Installs `kind`'s filter on the calling thread; false (and the reason kept) if it failed.
    @discardableResult
    func enter(_ kind: ThreadKind) -> Bool {
        do throws(SeccompError) {
            try filters.install(kind)
            return true
        } catch {
            failure.withLock { if $0 == nil { $0 = error.description } }
            return false
        }
    }

    /// A thread started by run(): installs its filter and reports in; vCPUs then wait for the gate.
    func enterStarted(_ kind: ThreadKind, waitForGate: Bool) {
        enter(kind)
        gate.arrive()
        if waitForGate { gate.waitOpen() }
    }

    /// The thread in run(): waits until `started` threads reported in, installs its own filter
    /// (after them: filters are inherited by threads started later), and opens the gate. If any
    /// filter failed, `stop` runs before the gate opens, so the vCPUs never enter the guest.
    func enterRunner(started: Int, stop: (String) -> Void) {
        gate.waitArrivals(started)
        enter(.main)
        if let failed { stop(failed) }
        gate.open()
    }
}

/// A count of threads that reported in and a flag they wait on: pthread mutex and condition.
private final class Gate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var arrived = 0
    private var isOpen = false

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition); pthread_mutex_destroy(mutex)
        condition.deallocate(); mutex.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    func arrive() { locked { arrived += 1; pthread_cond_broadcast(condition) } }
    func open() { locked { isOpen = true; pthread_cond_broadcast(condition) } }
    func waitArrivals(_ count: Int) { locked { while arrived < count { pthread_cond_wait(condition, mutex) } } }
    func waitOpen() { locked { while !isOpen { pthread_cond_wait(condition, mutex) } } }
}
