import CLinux
import Glibc

/// A dedicated OS thread for a blocking loop (a vCPU, the console), never a Swift task.
public struct Thread: Sendable {
    public let handle: pthread_t

    private final class Box: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new thread named `name` (visible in /proc/PID/task/*/comm).
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(Errno) -> Thread {
        let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            kiln_set_thread_name(String(box.name.prefix(15)))
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw Errno(rc, call: "pthread_create")
        }
        return Thread(handle: handle)
    }

    public func join() { pthread_join(handle, nil) }

    /// Runs `body` on a new thread and awaits its result. A blocking wait (on a booting guest, a
    /// socket) done this way holds none of Swift Concurrency's cooperative threads (two on a
    /// two-core host), and its own deadlines cannot slip while other tasks hold those threads.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (done: CheckedContinuation<T, Never>) in
            do {
                let thread = try spawn(name: name) { done.resume(returning: body()) }
                pthread_detach(thread.handle)
            } catch {
                done.resume(returning: body())
            }
        }
    }

    /// Sends `signal` to this thread (used to kick a vCPU out of KVM_RUN).
    public func kill(_ signal: Int32) { pthread_kill(handle, signal) }
}
