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
    /// Per-command cgroups with a pids limit; nil outside the guest (or without cgroup2).
    let cgroups: CommandCgroups?
    var connections: [Connection] = []
    /// Every process the agent runs, attached or detached, by `ChildProcess.id`; an exited one
    /// stays until its Exit is sent (a detached kept one: until an Attach collects it).
    var processes: [UInt64: ChildProcess] = [:]
    var nextProcessID: UInt64 = 1
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
        cgroups = options.isInit ? CommandCgroups.setUp() : nil
        // Before any snapshot: a restored clone's Reseed then needs no open or close.
        if setIDs { _ = kiln_entropy_prepare() }
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
                if c.unsentCount < AgentServer.outputHighWater {
                    for w in c.watches.values { add(w.fd, POLLIN, .watch(ci, w.stream)) }
                }
            }
            for p in processes.values {
                let readOutput = p.connection.map { $0.unsentCount < AgentServer.outputHighWater } ?? true
                if readOutput && p.outputOpen && p.stdoutWindow.available > 0 { add(p.output, POLLIN, .stdout(p.id)) }
                if readOutput && p.errorOutputOpen && p.stderrWindow.available > 0 { add(p.errorOutput, POLLIN, .stderr(p.id)) }
                if p.input >= 0 && p.hasPendingInput { add(p.input, POLLOUT, .stdin(p.id)) }
            }
            let timeout = connections.contains(where: \.hasPendingWork) ? 0 : pollTimeout()
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { return }
            let now = AgentServer.monotonicMillis()
            if n > 0 {
                for (i, fd) in fds.enumerated() where fd.revents != 0 {
                    handle(owners[i], revents: Int32(fd.revents))
                }
            }
            checkTimeouts(now: now)
            finishProcesses()
            for c in connections { c.pumpFiles(); c.pumpListings(); c.flush() }
            connections.removeAll { c in
                if c.closed { c.abandon(); return true }
                return false
            }
        }
    }

    enum PollOwner {
        case signals, listener
        case connection(Int)
        case stdout(UInt64), stderr(UInt64), stdin(UInt64)
        case watch(Int, UInt32)
    }

    func handle(_ owner: PollOwner, revents: Int32) {
        switch owner {
        case .signals: drainSignals()
        case .listener: acceptConnections()
        case .connection(let ci):
            let c = connections[ci]
            if revents & POLLOUT != 0 { c.flush() }
            if revents & (POLLIN | POLLHUP | POLLERR) != 0 { receive(c) }
        case .stdout(let id):
            if let p = processes[id] { readOutput(p, stderr: false) }
        case .stderr(let id):
            if let p = processes[id] { readOutput(p, stderr: true) }
        case .stdin(let id):
            if let p = processes[id] { writeInput(p) }
        case .watch(let ci, let s):
            connections[ci].readWatch(s)
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
            case SIGCHLD:
                reap()
                cgroups?.removeEmpty()
            default:
                // Forward a termination request to everything we started.
                for p in processes.values { p.send(signo) }
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
            for p in processes.values where p.waitStatus == nil {
                var status: Int32 = 0
                if waitpid(p.pid, &status, WNOHANG) == p.pid { p.waitStatus = status }
            }
            for pid in abandoned {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { abandoned.remove(pid) }
            }
        }
    }

    func record(_ pid: pid_t, _ status: Int32) {
        abandoned.remove(pid)
        for p in processes.values where p.pid == pid && p.waitStatus == nil { p.waitStatus = status; return }
    }

    var runningProcesses: Int { processes.values.filter { $0.waitStatus == nil }.count }

    /// The process with this pid: a running one first (after a pid was reused, an exited,
    /// uncollected process can share it).
    func process(pid: UInt32) -> ChildProcess? {
        let matching = processes.values.filter { UInt32($0.pid) == pid }
        return matching.first { $0.waitStatus == nil } ?? matching.first
    }

    func nextID() -> UInt64 {
        defer { nextProcessID += 1 }
        return nextProcessID
    }

    func pollTimeout() -> Int32 {
        var nearest: UInt64? = shutdownDeadline
        for p in processes.values { if let d = p.deadline, !p.timedOut { nearest = min(nearest ?? d, d) } }
        guard let nearest else { return -1 }
        let now = AgentServer.monotonicMillis()
        return nearest <= now ? 0 : Int32(min(nearest - now, 60_000))
    }

    func checkTimeouts(now: UInt64) {
        // A command whose first process exited while descendants hold its output open (a fork
        // bomb's shell returns at once) has not ended: the timeout kills what is left.
        for p in processes.values where !p.timedOut && !p.finished {
            if let d = p.deadline, d <= now {
                p.timedOut = true
                p.send(SIGKILL)
            }
        }
    }

    /// Shutdown: SIGTERM everything now, SIGKILL at the deadline, then sync and reset.
    func beginShutdown(graceMillis: UInt32) {
        guard shutdownDeadline == nil else { return }
        shutdownDeadline = AgentServer.monotonicMillis() + UInt64(graceMillis)
        for p in processes.values { p.send(SIGTERM) }
    }

    /// True when the agent should stop now.
    func finishShutdown(deadline: UInt64) -> Bool {
        let now = AgentServer.monotonicMillis()
        guard runningProcesses == 0 || now >= deadline else { return false }
        for p in processes.values where p.waitStatus == nil { p.send(SIGKILL) }
        for c in connections { c.flush() }
        sync()
        if options.isInit {
            _ = kiln_reboot()
        }
        return true
    }

    // MARK: Process I/O, attached or detached

    /// Reads what the process wrote, within the stream's credit (while detached: within what is
    /// left of one window of buffer), and queues it as frames or keeps it.
    func readOutput(_ p: ChildProcess, stderr: Bool) {
        let fd = stderr ? p.errorOutput : p.output
        let available = stderr ? p.stderrWindow.available : p.stdoutWindow.available
        let wanted = Int(min(available, UInt64(readBuffer.count)))
        guard wanted > 0, fd >= 0 else { return }
        let n = readBuffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, wanted) }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { return }
        if n <= 0 {
            // End of file; on a PTY, EIO once the last slave descriptor is closed.
            if stderr { p.errorOutputOpen = false } else { p.outputOpen = false }
            return
        }
        if stderr { _ = p.stderrWindow.take(upTo: n) } else { _ = p.stdoutWindow.take(upTo: n) }
        if let c = p.connection {
            readBuffer.withUnsafeBytes { raw in
                try? Frame.encodeData(stderr ? .stderr : .stdout, stream: p.stream,
                                      bytes: UnsafeRawBufferPointer(rebasing: raw[0..<n]), into: &c.out)
            }
        } else if stderr {
            p.bufferedStderr += readBuffer[0..<n]
        } else {
            p.bufferedStdout += readBuffer[0..<n]
        }
    }

    /// Moves pending stdin into the process; returns credit to the attached stream as it goes.
    func writeInput(_ p: ChildProcess) {
        while p.hasPendingInput && p.input >= 0 {
            let count = p.pendingInput.count - p.pendingInputStart
            let n = p.pendingInput.withUnsafeBytes { Glibc.write(p.input, $0.baseAddress! + p.pendingInputStart, count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                // The process closed its stdin: drop what is left, as a pipe would.
                p.pendingInput.removeAll(); p.pendingInputStart = 0
                if !p.pty { p.closeInput() }
                break
            }
            p.pendingInputStart += n
            if let credit = p.stdinWindow.consume(n), let c = p.connection {
                c.send(Frame(stream: p.stream, .credit(.stdin, bytes: credit)))
            }
        }
        if !p.hasPendingInput {
            p.pendingInput.removeAll(keepingCapacity: true)
            p.pendingInputStart = 0
            if p.stdinCloseRequested && p.input >= 0 {
                if p.pty {
                    // A terminal has no end of file of its own: type the EOF character.
                    var t = termios()
                    var eof: UInt8 = 4
                    if tcgetattr(p.output, &t) == 0 { eof = withUnsafeBytes(of: &t.c_cc) { $0[Int(VEOF)] } }
                    _ = Glibc.write(p.input, &eof, 1)
                    p.stdinCloseRequested = false
                } else {
                    p.closeInput()
                }
            }
        }
    }

    /// Sends Exit for attached processes that have ended and whose output is all sent; a
    /// detached one that has ended keeps its status (and buffered output) for an Attach.
    func finishProcesses() {
        for p in processes.values where p.waitStatus != nil {
            // A pipe whose writer has exited can still hold data: drain it while credit allows.
            let room = p.connection.map { $0.unsentCount < AgentServer.outputHighWater } ?? true
            if room && p.outputOpen && p.stdoutWindow.available > 0 { readOutput(p, stderr: false) }
            if room && p.errorOutputOpen && p.stderrWindow.available > 0 { readOutput(p, stderr: true) }
            guard p.finished else { continue }
            guard let c = p.connection else { p.closeAll(); continue }
            c.send(Frame(stream: p.stream, .exit(p.exitStatus)))
            p.closeAll()
            c.processes[p.stream] = nil
            forget(p)
        }
    }

    /// The process leaves the agent's table; its cgroup goes once it is empty.
    func forget(_ p: ChildProcess) {
        processes[p.id] = nil
        if let path = p.cgroup { cgroups?.release(path) }
    }

    /// Sends what a detached process buffered on the stream that now attached it.
    func sendBuffered(_ p: ChildProcess) {
        guard let c = p.connection else { return }
        for stderr in [false, true] {
            var data = stderr ? p.bufferedStderr : p.bufferedStdout
            var offset = 0
            while offset < data.count {
                let n = stderr ? p.stderrWindow.take(upTo: data.count - offset) : p.stdoutWindow.take(upTo: data.count - offset)
                guard n > 0 else { break } // cannot happen: a buffer holds at most one window
                c.send(Frame(stream: p.stream, stderr ? .stderr(Array(data[offset..<(offset + n)])) : .stdout(Array(data[offset..<(offset + n)]))))
                offset += n
            }
            data.removeSubrange(0..<offset)
            if stderr { p.bufferedStderr = data } else { p.bufferedStdout = data }
        }
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
