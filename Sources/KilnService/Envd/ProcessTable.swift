import AgentProtocol
import Sandbox
import Synchronization

/// What happens to a process, as envd's ProcessEvent reports it.
enum ProcessOutput: Sendable {
    case stdout([UInt8])
    case stderr([UInt8])
    case pty([UInt8])
    case end(ExitStatus?, error: String?)
}

/// One reader of a process's events (the Start stream, or a Connect). Its queue is bounded in
/// bytes: when the reader falls behind, the pump waits for it, so a client that does not read
/// stalls the process (through the agent's flow control), never grows the service's memory.
final class ProcessSubscriber: Sendable {
    struct State {
        var queue: [ProcessOutput] = []
        var bytes = 0
        var closed = false
        var consumer: CheckedContinuation<ProcessOutput?, Never>?
        var producer: CheckedContinuation<Void, Never>?
    }
    let state = Mutex(State())
    static let limit = 1 << 20

    /// Queues `event`, waiting while the queue is over its limit. Returns false once the reader left.
    func send(_ event: ProcessOutput) async -> Bool {
        let size: Int
        switch event {
        case .stdout(let b), .stderr(let b), .pty(let b): size = b.count
        case .end: size = 0
        }
        while true {
            let wait = state.withLock { s -> Bool? in
                if s.closed { return nil }
                if s.bytes > 0 && s.bytes + size > ProcessSubscriber.limit { return true }
                if let c = s.consumer { s.consumer = nil; c.resume(returning: event); return false }
                s.queue.append(event); s.bytes += size
                return false
            }
            guard let wait else { return false }
            if !wait { return true }
            await withCheckedContinuation { c in
                let resumeNow = state.withLock { s -> Bool in
                    if s.closed || s.bytes + size <= ProcessSubscriber.limit || s.bytes == 0 { return true }
                    s.producer = c
                    return false
                }
                if resumeNow { c.resume() }
            }
        }
    }

    /// The next event, nil once closed and drained.
    func next() async -> ProcessOutput? {
        await withCheckedContinuation { c in
            let ready = state.withLock { s -> (ProcessOutput?, CheckedContinuation<Void, Never>?)? in
                if !s.queue.isEmpty {
                    let e = s.queue.removeFirst()
                    if case .stdout(let b) = e { s.bytes -= b.count } else if case .stderr(let b) = e { s.bytes -= b.count } else if case .pty(let b) = e { s.bytes -= b.count }
                    let p = s.producer; s.producer = nil
                    return (e, p)
                }
                if s.closed { return (nil, nil) }
                s.consumer = c
                return nil
            }
            if let (e, p) = ready { p?.resume(); c.resume(returning: e) }
        }
    }

    /// The reader is gone (or the process ended and everything was queued).
    func close() {
        let (c, p) = state.withLock { s in
            s.closed = true
            defer { s.consumer = nil; s.producer = nil }
            return (s.consumer, s.producer)
        }
        c?.resume(returning: nil)
        p?.resume()
    }
}

/// A process started through the API.
final class ServiceProcess: Sendable {
    struct Config: Sendable {
        var cmd: String
        var args: [String]
        var envs: [String: String]
        var cwd: String?
    }
    let pid: UInt32
    let tag: String?
    let config: Config
    let pty: Bool
    let remote: RemoteProcess
    let subscribers = Mutex<[ProcessSubscriber]>([])

    init(pid: UInt32, tag: String?, config: Config, pty: Bool, remote: RemoteProcess) {
        self.pid = pid; self.tag = tag; self.config = config; self.pty = pty; self.remote = remote
    }

    func subscribe() -> ProcessSubscriber {
        let s = ProcessSubscriber()
        subscribers.withLock { $0.append(s) }
        return s
    }

    func unsubscribe(_ s: ProcessSubscriber) {
        subscribers.withLock { $0.removeAll { $0 === s } }
        s.close()
    }

    /// Moves the process's output to its subscribers until it ends (output with nobody
    /// subscribed is dropped, as envd does), then reports the end and removes it from `table`.
    func pump(table: ProcessTable) async {
        for await chunk in remote.output {
            let event: ProcessOutput
            switch chunk {
            case .stdout(let b): event = pty ? .pty(b) : .stdout(b)
            case .stderr(let b): event = .stderr(b)
            }
            for s in subscribers.withLock({ $0 }) where await !s.send(event) { unsubscribe(s) }
        }
        let end: ProcessOutput
        do { end = .end(try await remote.wait(), error: nil) } catch { end = .end(nil, error: "\(error)") }
        table.remove(pid)
        for s in subscribers.withLock({ $0 }) {
            _ = await s.send(end)
            s.close()
        }
    }
}

/// The processes of one sandbox that are still running, by pid.
final class ProcessTable: Sendable {
    let processes = Mutex<[UInt32: ServiceProcess]>([:])

    func add(_ p: ServiceProcess) { processes.withLock { $0[p.pid] = p } }
    func remove(_ pid: UInt32) { _ = processes.withLock { $0.removeValue(forKey: pid) } }
    var all: [ServiceProcess] { processes.withLock { Array($0.values) }.sorted { $0.pid < $1.pid } }

    func find(pid: UInt32?, tag: String?) -> ServiceProcess? {
        processes.withLock { table in
            if let pid { return table[pid] }
            if let tag { return table.values.first { $0.tag == tag } }
            return nil
        }
    }

    /// The VM is gone: every reader learns that its process ended.
    func endAll() {
        for p in processes.withLock({ t in defer { t.removeAll() }; return Array(t.values) }) {
            for s in p.subscribers.withLock({ $0 }) { s.close() }
        }
    }
}
