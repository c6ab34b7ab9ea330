import AgentProtocol
import CLinux
import Glibc

/// The agent's single-threaded event loop: accepts host connections, runs their requests, moves
/// process output and file data within the flow-control windows, and reaps children.
public final class AgentServer {
    public struct Options: Sendable {
        /// Free text in HelloAck.
        public var software: String
        /// PID 1 of the guest: reap every child (orphans included), forward SIGTERM/SIGINT/SIGHUP
        /// to the processes it started, and reset the machine on Shutdown.
        public var isInit: Bool
        /// `NAME=value` entries added to every process's environment unless the host set NAME
        /// (the host profile's GLIBC_TUNABLES, which the kernel gave to init).
        public var inheritedEnvironment: [String]
        public init(software: String, isInit: Bool, inheritedEnvironment: [String] = []) {
            self.software = software; self.isInit = isInit; self.inheritedEnvironment = inheritedEnvironment
        }
    }

    let options: Options
    let listener: Int32
    let signals: Int32
    let capabilities: Capabilities
    let setIDs: Bool
    var connections: [Connection] = []
    /// Children whose connection went away: killed, still to be reaped.
    var abandoned: Set<pid_t> = []
    let started = AgentServer.monotonicMillis()
    var shutdownDeadline: UInt64?
    var readBuffer = [UInt8](repeating: 0, count: 1 << 18)
    /// Stop reading process output for a connection whose unsent bytes exceed this.
    static let outputHighWater = 4 << 20

    /// Serves connections accepted on `listener` (a listening socket, non-blocking).
    public init(listener: Int32, options: Options) throws(AgentError) {
        self.options = options
        self.listener = listener
        signal(SIGPIPE, SIG_IGN)
        let wanted: [Int32] = [SIGCHLD, SIGTERM, SIGINT, SIGHUP]
        signals = kiln_signalfd(wanted, Int32(wanted.count))
        guard signals >= 0 else { throw AgentError("signalfd: \(String(cString: strerror(errno)))") }
        setIDs = getuid() == 0
        var caps: Capabilities = setIDs ? [.setIDs] : []
        if access("/dev/ptmx", R_OK | W_OK) == 0 { caps.insert(.pty) }
        capabilities = caps
    }

    /// Runs until Shutdown (or forever). In init mode Shutdown resets the machine and never returns.
    public func run() {
        var fds: [pollfd] = []
        var owners: [PollOwner] = []
        while true {
            if let deadline = shutdownDeadline, finishShutdown(deadline: deadline) { return }
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            func add(_ fd: Int32, _ events: Int32, _ owner: PollOwner) {
                fds.append(pollfd(fd: fd, events: Int16(events), revents: 0))
                owners.append(owner)
            }
            add(signals, POLLIN, .signals)
            if shutdownDeadline == nil { add(listener, POLLIN, .listener) }
            for (ci, c) in connections.enumerated() {
                add(c.socket, POLLIN | (c.hasOutput ? POLLOUT : 0), .connection(ci))
                let readOutput = c.unsentCount < AgentServer.outputHighWater
                for p in c.processes.values {
                    if readOutput && p.outputOpen && p.stdoutWindow.available > 0 { add(p.output, POLLIN, .stdout(ci, p.stream)) }
                    if readOutput && p.errorOutputOpen && p.stderrWindow.available > 0 { add(p.errorOutput, POLLIN, .stderr(ci, p.stream)) }
                    if p.input >= 0 && p.hasPendingInput { add(p.input, POLLOUT, .stdin(ci, p.stream)) }
                }
            }
            let timeout = pollTimeout()
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { return }
            let now = AgentServer.monotonicMillis()
            if n > 0 {
                for (i, fd) in fds.enumerated() where fd.revents != 0 {
                    handle(owners[i], revents: Int32(fd.revents))
                }
            }
            checkTimeouts(now: now)
            for c in connections { c.pumpFiles(); c.finishProcesses(); c.flush() }
            connections.removeAll { c in
                if c.closed { c.abandon(into: &abandoned); return true }
                return false
            }
        }
    }

    enum PollOwner {
        case signals, listener
        case connection(Int)
        case stdout(Int, UInt32), stderr(Int, UInt32), stdin(Int, UInt32)
    }

    func handle(_ owner: PollOwner, revents: Int32) {
        switch owner {
        case .signals: drainSignals()
        case .listener: acceptConnections()
        case .connection(let ci):
            let c = connections[ci]
            if revents & POLLOUT != 0 { c.flush() }
            if revents & (POLLIN | POLLHUP | POLLERR) != 0 { receive(c) }
        case .stdout(let ci, let s):
            if let p = connections[ci].processes[s] { connections[ci].readOutput(p, stderr: false) }
        case .stderr(let ci, let s):
            if let p = connections[ci].processes[s] { connections[ci].readOutput(p, stderr: true) }
        case .stdin(let ci, let s):
            if let p = connections[ci].processes[s] { connections[ci].writeInput(p) }
        }
    }

    func acceptConnections() {
        while true {
            let fd = kiln_accept_nonblocking(listener)
            if fd < 0 { return }
            connections.append(Connection(socket: fd, server: self))
        }
    }

    func receive(_ c: Connection) {
        let n = readBuffer.withUnsafeMutableBytes { Glibc.read(c.socket, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR || errno == EAGAIN { return }
            c.closed = true
            return
        }
        if n == 0 {
            // The host went away (or closed its side after a protocol error).
            if case .failure(let e) = Result(catching: { () throws(ProtocolError) in try c.decoder.finish() }) { c.log("connection ended: \(e)") }
            c.closed = true
            return
        }
        readBuffer.withUnsafeBytes { c.decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        c.processFrames()
    }

    func drainSignals() {
        while true {
            let signo = kiln_signalfd_read(signals)
            if signo <= 0 { break }
            switch signo {
            case SIGCHLD: reap()
            default:
                // Forward a termination request to everything we started.
                for c in connections { for p in c.processes.values { p.send(signo) } }
            }
        }
    }

    /// Collects exit statuses: every child in init mode, only our own otherwise.
    func reap() {
        if options.isInit {
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, WNOHANG)
                if pid <= 0 { break }
                record(pid, status)
            }
        } else {
            for c in connections { for p in c.processes.values where p.waitStatus == nil {
                var status: Int32 = 0
                if waitpid(p.pid, &status, WNOHANG) == p.pid { p.waitStatus = status }
            } }
            for pid in abandoned {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { abandoned.remove(pid) }
            }
        }
    }

    func record(_ pid: pid_t, _ status: Int32) {
        abandoned.remove(pid)
        for c in connections { for p in c.processes.values where p.pid == pid { p.waitStatus = status; return } }
    }

    var runningProcesses: Int { connections.reduce(0) { $0 + $1.processes.values.filter { $0.waitStatus == nil }.count } }

    func pollTimeout() -> Int32 {
        var nearest: UInt64? = shutdownDeadline
        for c in connections { for p in c.processes.values { if let d = p.deadline, !p.timedOut { nearest = min(nearest ?? d, d) } } }
        guard let nearest else { return -1 }
        let now = AgentServer.monotonicMillis()
        return nearest <= now ? 0 : Int32(min(nearest - now, 60_000))
    }

    func checkTimeouts(now: UInt64) {
        for c in connections { for p in c.processes.values where !p.timedOut && p.waitStatus == nil {
            if let d = p.deadline, d <= now {
                p.timedOut = true
                p.send(SIGKILL)
            }
        } }
    }

    /// Shutdown: SIGTERM everything now, SIGKILL at the deadline, then sync and reset.
    func beginShutdown(graceMillis: UInt32) {
        guard shutdownDeadline == nil else { return }
        shutdownDeadline = AgentServer.monotonicMillis() + UInt64(graceMillis)
        for c in connections { for p in c.processes.values { p.send(SIGTERM) } }
    }

    /// True when the agent should stop now.
    func finishShutdown(deadline: UInt64) -> Bool {
        let now = AgentServer.monotonicMillis()
        guard runningProcesses == 0 || now >= deadline else { return false }
        for c in connections { for p in c.processes.values where p.waitStatus == nil { p.send(SIGKILL) } }
        for c in connections { c.flush() }
        sync()
        if options.isInit {
            _ = kiln_reboot()
        }
        return true
    }

    static func monotonicMillis() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
