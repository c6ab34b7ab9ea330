import CLinux
import Glibc
import Synchronization

/// A task executor with threads of its own, for work that blocks (starting and stopping VMs, a
/// connect that waits for the guest, snapshot files, a synchronous test): run under
/// `withTaskExecutorPreference`, it occupies one of these threads instead of one of Swift
/// Concurrency's cooperative ones. That pool has one thread per core (two on a two-core host)
/// and never adds one for a thread that blocks, so one blocked pool thread is half the
/// process's async capacity.
public final class BlockingExecutor: TaskExecutor, @unchecked Sendable {
    private let queue = Mutex<[UnownedJob]>([])
    private let available: UnsafeMutablePointer<pthread_cond_t>
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private var threads: [pthread_t] = []
    private let name: String

    /// `name` is the threads' name in /proc/PID/task/*/comm (at most 15 bytes).
    public init(threads count: Int, name: String = "kiln-blocking") {
        self.name = String(name.prefix(15))
        lock = .allocate(capacity: 1)
        available = .allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        pthread_cond_init(available, nil)
        for _ in 0..<max(1, count) {
            var thread = pthread_t()
            let box = Unmanaged.passRetained(self)
            let rc = pthread_create(&thread, nil, { raw in
                let executor = Unmanaged<BlockingExecutor>.fromOpaque(raw!).takeRetainedValue()
                kiln_set_thread_name(executor.name)
                executor.work()
                return nil
            }, box.toOpaque())
            if rc == 0 { pthread_detach(thread); threads.append(thread) } else { box.release() }
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        pthread_mutex_lock(lock)
        queue.withLock { $0.append(unowned) }
        pthread_cond_signal(available)
        pthread_mutex_unlock(lock)
    }

    private func work() {
        while true {
            pthread_mutex_lock(lock)
            var job: UnownedJob?
            while true {
                job = queue.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                if job != nil { break }
                pthread_cond_wait(available, lock)
            }
            pthread_mutex_unlock(lock)
            job!.runSynchronously(on: asUnownedTaskExecutor())
        }
    }

    /// Runs `body` on this executor's threads.
    public func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        try await withTaskExecutorPreference(self) { try await body() }
    }
}
