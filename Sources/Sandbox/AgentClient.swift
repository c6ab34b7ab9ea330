import AgentProtocol
import Glibc
import LinuxSys
import Synchronization

/// Why an agent operation did not succeed.
public enum AgentClientError: Error, CustomStringConvertible, Sendable {
    /// The connection ended (or could not be made); the text says why.
    case connection(String)
    /// One side broke docs/agent-protocol.md; the connection is closed.
    case protocolError(ProtocolError)
    /// The agent refused or failed the operation (errno and message from the guest).
    case failed(Failure)
    /// The agent speaks an older protocol minor that lacks this operation (e.g. a 1.1 agent
    /// asked for Stat, which is 1.2); nothing was sent.
    case unsupported(operation: String, needs: Version, agent: Version)

    public var description: String {
        switch self {
        case .connection(let why): why
        case .protocolError(let e): "\(e)"
        case .failed(let f): f.message
        case .unsupported(let operation, let needs, let agent):
            "\(operation) needs agent protocol \(needs), the agent speaks \(agent); rebuild the guest image with this Kiln's agent"
        }
    }
}

/// A session with a Kiln agent over one stream connection (docs/agent-protocol.md): processes,
/// files and health checks, each operation async. A reader thread decodes the agent's frames and
/// hands them to the waiting operations; writes go out under a lock.
public final class AgentClient: Sendable {
    let fd: Int32
    public let agentSoftware: String
    public let capabilities: Capabilities
    public let version: Version
    /// The session was resumed on a connection kept across a snapshot (no handshake, no new connection).
    public let resumedSession: Bool
    let state = Mutex(State())
    private let writeLock = Mutex(())
    /// Frames written, and the last of them the agent is known to have handled (a Pong answers
    /// every frame before its Ping): whether the session stands at a frame boundary (`idleMark`).
    private let sequence = Mutex((sent: UInt64(0), settled: UInt64(0), pings: [UInt64: UInt64]()))
    private let readerThread = Mutex<LinuxSys.Thread?>(nil)
    /// When a frame last went out or came in (CLOCK_MONOTONIC, ns): what idle parking measures.
    private let activity = Atomic<UInt64>(AgentClient.monotonicNanos())
    /// Runs before every write to the agent (Sandbox's idle parking resumes a parked VM there).
    private let sendHook = Mutex<(@Sendable ([Frame]) -> Void)?>(nil)

    struct State: ~Copyable {
        var nextStream: UInt32 = 1
        var processes: [UInt32: ProcessState] = [:]
        var reads: [UInt32: ReadState] = [:]
        var writes: [UInt32: WriteState] = [:]
        var pings: [UInt64: CheckedContinuation<Pong, any Error>] = [:]
        /// Streams of the 1.2 request/reply operations (filesystem, users, process management).
        var requests: [UInt32: RequestState] = [:]
        var watches: [UInt32: WatchState] = [:]
        /// Waiters for Reseeded answers, in the order the Reseeds were sent.
        var reseeds: [@Sendable (Result<Int32, any Error>) -> Void] = []
        var nextNonce: UInt64 = 1
        var closed: AgentClientError?
    }

    /// Continues a session the agent already has (a connection kept across a snapshot and
    /// attached again, docs/vsock.md): no handshake, `session` says what was negotiated. The
    /// session must have stood at a frame boundary with no stream open (`AgentSession`).
    public init(resuming socket: consuming FileDescriptor, session: AgentSession) throws(AgentClientError) {
        let fd = socket.release()
        self.fd = fd
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        version = session.version
        resumedSession = true
        agentSoftware = session.software
        capabilities = session.capabilities
        let thread = try? LinuxSys.Thread.spawn(name: "kiln-agent-rx") { [self] in readLoop(FrameDecoder(from: .agent)) }
        guard let thread else { Glibc.close(fd); throw .connection("cannot start the reader thread") }
        readerThread.withLock { $0 = thread }
    }

    /// What a snapshot needs to resume this session, or nil when it cannot be resumed: a stream
    /// is open, or a frame was sent that the agent has not been seen to handle (a Ping settles
    /// every frame before it). Compare before and after the snapshot: an unchanged mark means
    /// nothing was sent in between.
    public func idleMark() -> UInt64? {
        let open = state.withLock { s in
            s.processes.values.contains { $0.exit == nil } || !s.reads.isEmpty || !s.writes.isEmpty || !s.requests.isEmpty
                || !s.watches.isEmpty || !s.pings.isEmpty || !s.reseeds.isEmpty || s.closed != nil
        }
        if open { return nil }
        return sequence.withLock { q in q.sent == q.settled ? q.sent : nil }
    }

    /// Whether no operation waits on the agent: no process without its exit, no transfer,
    /// request, watch, ping or reseed open. A quiescent session's agent owes the host nothing.
    public var isQuiescent: Bool {
        state.withLock { s in
            !(s.processes.values.contains { $0.exit == nil } || !s.reads.isEmpty || !s.writes.isEmpty || !s.requests.isEmpty
                || !s.watches.isEmpty || !s.pings.isEmpty || !s.reseeds.isEmpty)
        }
    }

    /// Nanoseconds (CLOCK_MONOTONIC) of the last frame sent or received.
    public var lastActivity: UInt64 { activity.load(ordering: .sequentiallyConsistent) }

    /// Sets what runs before each write to the agent, on the writing thread (nil: nothing).
    func setSendHook(_ hook: (@Sendable ([Frame]) -> Void)?) { sendHook.withLock { $0 = hook } }

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// The negotiated session, as `AgentSession` records it in a snapshot.
    public var session: AgentSession { AgentSession(version: version, software: agentSoftware, capabilities: capabilities) }

    /// Runs the handshake on `socket` (a connected stream socket, which this client now owns).
    /// The handshake has a deadline (`handshakeTimeout` seconds): a guest can answer a connection
    /// and then say nothing (a root process there can stand in for the agent), and a caller
    /// adopting or restoring a sandbox must not wait on it for ever.
    public init(socket: consuming FileDescriptor, software: String = "kiln", handshakeTimeout: Double = 30) throws(AgentClientError) {
        let fd = socket.release()
        self.fd = fd
        resumedSession = false
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var deadline = timeval(tv_sec: Int(handshakeTimeout), tv_usec: Int((handshakeTimeout - handshakeTimeout.rounded(.down)) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, socklen_t(MemoryLayout<timeval>.size))
        var decoder = FrameDecoder(from: .agent)
        do {
            try AgentClient.write(fd, Frame(stream: 0, .hello(Hello(software: software))).encoded())
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                if let frame = try decoder.next() {
                    switch frame.message {
                    case .helloAck(let ack):
                        version = try Handshake.accept(ack)
                        agentSoftware = ack.software
                        capabilities = ack.capabilities
                    case .protocolError(let code, let message):
                        throw AgentClientError.protocolError(.remote(code: code, message: message))
                    default:
                        throw AgentClientError.protocolError(.unexpected(frame.message.type))
                    }
                    break
                }
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    throw AgentClientError.connection("the agent did not answer the handshake within \(Int(handshakeTimeout.rounded(.up))) s")
                }
                if n <= 0 { throw AgentClientError.connection("the agent closed the connection during the handshake") }
                decoder.feed(buffer[0..<n])
            }
            // From here on the reader thread waits as long as the session lasts.
            deadline = timeval(tv_sec: 0, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, socklen_t(MemoryLayout<timeval>.size))
        } catch {
            Glibc.close(fd)
            switch error {
            case let e as AgentClientError: throw e
            case let e as ProtocolError: throw .protocolError(e)
            default: throw .connection("\(error)")
            }
        }
        let leftover = decoder
        let thread = try? LinuxSys.Thread.spawn(name: "kiln-agent-rx") { [self] in readLoop(leftover) }
        guard let thread else { Glibc.close(fd); throw .connection("cannot start the reader thread") }
        readerThread.withLock { $0 = thread }
    }

    deinit {
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        readerThread.withLock { $0?.join() }
        Glibc.close(fd)
    }

    /// Ends the session: every waiting operation fails, and the agent sees the connection close.
    public func close() {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    // MARK: Operations

    /// A round trip to the agent: its uptime and the number of processes it runs.
    /// A guest that stops answering (a wedged agent, or a root process standing in for its peer)
    /// fails the ping after `timeout` seconds instead of holding the caller for ever; the session
    /// stays open, and a late Pong only settles the frames sent before it (`idleMark`).
    public func ping(timeout: Double = 30) async throws -> Pong {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Pong, any Error>) in
            let nonce: UInt64? = state.withLock { s in
                if let e = s.closed { c.resume(throwing: e); return nil }
                let n = s.nextNonce; s.nextNonce += 1
                s.pings[n] = c
                return n
            }
            guard let nonce else { return }
            send(Frame(stream: 0, .ping(nonce: nonce)))
            Task { [weak self] in
                try? await Task.sleep(nanoseconds: UInt64(max(0, timeout) * 1e9))
                guard let self else { return }
                let late = state.withLock { $0.pings.removeValue(forKey: nonce) }
                // The sequence keeps its entry: a late Pong still settles the frames before it.
                guard let late else { return }
                late.resume(throwing: AgentClientError.connection(
                    "the agent did not answer a ping within \(Int(timeout.rounded(.up))) s"))
            }
        }
    }

    /// Gives the guest's random number generator fresh entropy and reseeds it now (protocol 1.1;
    /// the agent must run as root in the guest). Returns 0 or the guest's errno.
    public func reseed(_ entropy: [UInt8]) async throws -> Int32 {
        guard version.minor >= 1 else { throw AgentClientError.connection("the agent speaks protocol \(version), Reseed needs 1.1") }
        return try await reseeded(sending: [Frame(stream: 0, .reseed(entropy))], entropy: entropy)
    }

    /// Sends `frames` (ending in a Reseed of `entropy`) and waits for the Reseeded answer.
    private func reseeded(sending frames: [Frame], entropy: [UInt8]) async throws -> Int32 {
        guard (1...512).contains(entropy.count) else { throw AgentClientError.protocolError(.invalidValue(.reseed, field: "byte count")) }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int32, any Error>) in
            let ok = state.withLock { s in
                if let e = s.closed { c.resume(throwing: e); return false }
                s.reseeds.append { c.resume(with: $0) }
                return true
            }
            if ok { send(frames) }
        }
    }

    /// Sets the guest's wall clock to this host's (protocol 1.1; no answer, ordered before what follows).
    public func setTimeFromHost() throws {
        guard version.minor >= 1 else { throw AgentClientError.connection("the agent speaks protocol \(version), SetTime needs 1.1") }
        send(AgentClient.hostTimeFrame())
    }

    static func hostTimeFrame() -> Frame {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Frame(stream: 0, .setTime(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec)))
    }

    /// What a restored sandbox needs before its first command (protocol 1.1): the host's time and
    /// fresh entropy, as SetTime and Reseed in one write, so the guest handles both on one wake-up.
    /// Returns Reseeded's errno (0: done); the clock is set before it.
    public func setTimeAndReseed(_ entropy: [UInt8]) async throws -> Int32 {
        guard version.minor >= 1 else { throw AgentClientError.connection("the agent speaks protocol \(version), SetTime needs 1.1") }
        return try await reseeded(sending: [AgentClient.hostTimeFrame(), Frame(stream: 0, .reseed(entropy))], entropy: entropy)
    }

    /// SetTime and Reseed as `setTimeAndReseed`, written before this returns, without waiting for
    /// the answer: the agent handles frames in order, so everything sent after them finds the
    /// clock set and the generator reseeded. `answered` gets Reseeded's errno (or the error) later.
    public func sendTimeAndReseed(_ entropy: [UInt8], answered: @escaping @Sendable (Result<Int32, any Error>) -> Void) throws(AgentClientError) {
        guard version.minor >= 1 else { throw .connection("the agent speaks protocol \(version), SetTime needs 1.1") }
        guard (1...512).contains(entropy.count) else { throw .protocolError(.invalidValue(.reseed, field: "byte count")) }
        let closed: AgentClientError? = state.withLock { s in
            if let e = s.closed { return e }
            s.reseeds.append(answered)
            return nil
        }
        if let closed { throw closed }
        send([AgentClient.hostTimeFrame(), Frame(stream: 0, .reseed(entropy))])
    }

    /// Tells the agent to stop every process (SIGTERM, SIGKILL after `graceMillis`), sync and
    /// reset the machine. There is no answer: the connection ends.
    public func shutdown(graceMillis: UInt32 = 1000) {
        send(Frame(stream: 0, .shutdown(graceMillis: graceMillis)))
    }

    /// Starts a process. Throws `.failed` when the agent could not start it (errno ENOENT: no
    /// such command).
    public func exec(_ exec: Exec) async throws -> RemoteProcess {
        try await openProcess { .exec(exec) }
    }

    /// Starts a process (protocol 1.2) that, with `keep`, goes on running when this connection
    /// closes: its output is then buffered in the guest (one window, 1 MiB, per channel; then
    /// the process blocks on its pipe) and its exit status kept, until `attach(pid:)` from any
    /// connection collects them. `tag` is free text reported by `listProcesses()`.
    /// `limits` (protocol 1.3; 1.4 with `openFiles`) bound the process and its descendants in the guest.
    public func exec(_ exec: Exec, keep: Bool, tag: String = "", limits: Limits? = nil) async throws -> RemoteProcess {
        if (limits?.openFiles ?? 0) != 0 {
            try require(minor: 4, "Spawn with an open-files limit (--open-files)")
        } else {
            try require(minor: limits == nil ? 2 : 3, limits == nil ? "Spawn" : "Spawn with limits (--pids)")
        }
        return try await openProcess { .spawn(Spawn(exec, flags: keep ? [.keep] : [], tag: tag, limits: limits)) }
    }

    /// Attaches to a process the agent runs (protocol 1.2), kept or not, detached or attached
    /// elsewhere: a stream attached before ends (its `wait()` throws `.failed` with EBUSY).
    /// Output buffered while detached arrives first, then what follows and the exit status; a
    /// process that already exited gives its buffered output and Exit. Throws `.failed` with
    /// ESRCH for a pid the agent does not run.
    public func attach(pid: UInt32) async throws -> RemoteProcess {
        try require(minor: 2, "Attach")
        return try await openProcess { .attach(pid: pid) }
    }

    /// Every process the agent runs (protocol 1.2): attached, detached, and exited ones whose
    /// status waits to be collected (`flags` says which).
    public func listProcesses() async throws -> [ProcessSummary] {
        try require(minor: 2, "ListProcesses")
        guard case .processes(let list) = try await request(.listProcesses) else { throw unexpectedReply() }
        return list
    }

    /// Sends `signal` to the process group of a process the agent runs, without attaching
    /// (protocol 1.2). Throws `.failed` with ESRCH when no such process is running.
    public func signal(pid: UInt32, _ signal: Int32) async throws {
        try require(minor: 2, "SignalProcess")
        guard (1...64).contains(signal) else { throw AgentClientError.protocolError(.invalidValue(.signalProcess, field: "signal number")) }
        guard case .done = try await request(.signalProcess(pid: pid, signal: signal)) else { throw unexpectedReply() }
    }

    /// lstat(2) of a guest path, with owner and group names and, for a symlink, where it
    /// leads (protocol 1.2). Throws `.failed` with the guest's errno (ENOENT: no such path).
    public func stat(_ path: String) async throws -> EntryInfo {
        try require(minor: 2, "Stat")
        guard case .entry(let e) = try await request(.stat(path: path)) else { throw unexpectedReply() }
        return e
    }

    /// The entries below a guest directory (protocol 1.2), `depth` levels down (1: its
    /// children), depth first, each directory's children after it, in the guest's readdir
    /// order. `path` may be a symlink to a directory; symlinks below it are not followed.
    public func listDirectory(_ path: String, depth: UInt32 = 1) async throws -> [EntryInfo] {
        try require(minor: 2, "ListDirectory")
        guard case .entries(let list) = try await request(.listDirectory(path: path, depth: depth)) else { throw unexpectedReply() }
        return list
    }

    /// Creates a directory and its missing parents, each with `mode` and owned by uid/gid
    /// (protocol 1.2). Returns false when `path` already was a directory; throws `.failed`
    /// with EEXIST when it exists as something else.
    public func makeDirectory(_ path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) async throws -> Bool {
        try require(minor: 2, "MakeDirectory")
        let request = MakeDirectory(path: path, mode: mode, uid: uid, gid: gid)
        guard case .directoryMade(let created) = try await self.request(.makeDirectory(request)) else { throw unexpectedReply() }
        return created
    }

    /// rename(2) in the guest (protocol 1.2); returns the destination's entry.
    public func rename(_ from: String, to: String) async throws -> EntryInfo {
        try require(minor: 2, "Rename")
        guard case .entry(let e) = try await request(.rename(from: from, to: to)) else { throw unexpectedReply() }
        return e
    }

    /// Removes a file, symlink or whole directory tree (protocol 1.2). A path that does not
    /// exist is not an error (as envd's Remove).
    public func remove(_ path: String) async throws {
        try require(minor: 2, "Remove")
        guard case .done = try await request(.remove(path: path)) else { throw unexpectedReply() }
    }

    /// A user from the guest's /etc/passwd and /etc/group, by name or number (protocol 1.2).
    /// Throws `.failed` with ENOENT when there is no such user.
    public func lookupUser(_ name: String) async throws -> UserInfo {
        try require(minor: 2, "LookupUser")
        guard case .user(let u) = try await request(.lookupUser(name: name)) else { throw unexpectedReply() }
        return u
    }

    /// Watches a guest directory (protocol 1.2): returns once the watch is in place; its
    /// `events` then deliver changes until `cancel()` (the sequence then ends) or an error ends
    /// them (the directory was removed: `.failed` ENOENT; events lost: EOVERFLOW).
    public func watchDirectory(_ path: String, recursive: Bool = false) async throws -> RemoteWatch {
        try require(minor: 2, "WatchDirectory")
        let (events, continuation) = AsyncThrowingStream<WatchEvent, any Error>.makeStream()
        let stream = try state.withLock { s throws(AgentClientError) -> UInt32 in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            s.watches[id] = WatchState(events: continuation)
            return id
        }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let ok = state.withLock { s in
                if let e = s.closed { s.watches[stream] = nil; c.resume(throwing: e); return false }
                s.watches[stream]?.started = c
                return true
            }
            if ok { send(Frame(stream: stream, .watchDirectory(path: path, recursive: recursive))) }
        }
        return RemoteWatch(client: self, stream: stream, events: events)
    }

    /// Exec, Spawn and Attach: a process stream answered by Started or Failure.
    private func openProcess(_ message: () -> Message) async throws -> RemoteProcess {
        let (stream, output) = try state.withLock { s throws(AgentClientError) -> (UInt32, AsyncStream<OutputChunk>) in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            let (output, continuation) = AsyncStream<OutputChunk>.makeStream()
            s.processes[id] = ProcessState(output: continuation)
            return (id, output)
        }
        let frame = Frame(stream: stream, message())
        let pid: UInt32 = try await withCheckedThrowingContinuation { c in
            let ok = state.withLock { s in
                if let e = s.closed { c.resume(throwing: e); return false }
                s.processes[stream]?.started = c
                return true
            }
            if ok { send(frame) }
        }
        return RemoteProcess(client: self, stream: stream, pid: pid, output: output)
    }

    /// A 1.2 request on a new stream; returns its one reply (a listing: Entries or Processes
    /// holding every frame's items) or throws its Failure.
    private func request(_ message: Message) async throws -> Message {
        let stream = try state.withLock { s throws(AgentClientError) -> UInt32 in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            s.requests[id] = RequestState(listsProcesses: message.type == .listProcesses)
            return id
        }
        return try await withCheckedThrowingContinuation { c in
            let ok = state.withLock { s in
                if let e = s.closed { s.requests[stream] = nil; c.resume(throwing: e); return false }
                s.requests[stream]?.done = c
                return true
            }
            if ok { send(Frame(stream: stream, message)) }
        }
    }

    private func require(minor: UInt16, _ operation: String) throws(AgentClientError) {
        guard version.minor >= minor else {
            throw .unsupported(operation: operation, needs: Version(major: Wire.version.major, minor: minor), agent: version)
        }
    }

    private func unexpectedReply() -> AgentClientError { .connection("the agent answered with an unexpected message") }

    /// Writes `contents` to `path` in the guest atomically (FileWritten arrives after fsync and rename).
    public func writeFile(_ path: String, contents: [UInt8], mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                          options: WriteFile.Options = []) async throws -> UInt64 {
        var pending: [UInt8]? = contents
        return try await writeFile(path, mode: mode, uid: uid, gid: gid, options: options) {
            defer { pending = nil }
            return pending
        }
    }

    /// Reads a regular file from the guest: its metadata and contents.
    public func readFile(_ path: String) async throws -> (info: FileInfo, contents: [UInt8]) {
        let stream = try state.withLock { s throws(AgentClientError) -> UInt32 in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            s.reads[id] = ReadState()
            return id
        }
        // The continuation is in place before the request leaves, so an answer cannot beat it.
        return try await withCheckedThrowingContinuation { c in
            let ok = state.withLock { s in
                if let e = s.closed { s.reads[stream] = nil; c.resume(throwing: e); return false }
                s.reads[stream]?.done = c
                return true
            }
            if ok { send(Frame(stream: stream, .readFile(path: path))) }
        }
    }

    // MARK: Internals used by RemoteProcess

    func send(_ frame: Frame) { send([frame]) }

    /// Writes the frames in one piece (one vsock packet when they fit).
    func send(_ frames: [Frame]) {
        var bytes: [UInt8] = []
        for f in frames { guard (try? f.encode(into: &bytes)) != nil else { return } }
        // Activity first, then the hook: idle parking re-reads it after pausing (IdleParking).
        activity.store(AgentClient.monotonicNanos(), ordering: .sequentiallyConsistent)
        if let hook = sendHook.withLock({ $0 }) { hook(frames) }
        writeLock.withLock { _ in
            sequence.withLock { q in
                q.sent += UInt64(frames.count)
                for f in frames { if case .ping(let nonce) = f.message { q.pings[nonce] = q.sent } }
            }
            try? AgentClient.write(fd, bytes)
        }
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) throws(AgentClientError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .connection("cannot send to the agent: \(Errno.current("send"))")
            }
            offset += n
        }
    }

    /// Waits until `stream` may send data on its stdin or file channel; returns the bytes granted
    /// (at most `wanted`), or 0 when the stream has ended.
    func takeCredit(_ stream: UInt32, wanted: Int) async throws -> Int {
        while true {
            let result: Int? = try state.withLock { s throws(AgentClientError) -> Int? in
                if let e = s.closed { throw e }
                if s.processes[stream] != nil {
                    if s.processes[stream]!.exited { return 0 }
                    let n = s.processes[stream]!.stdinWindow.take(upTo: wanted)
                    return n > 0 ? n : nil
                }
                if s.writes[stream] != nil {
                    if s.writes[stream]!.result != nil { return 0 }
                    let n = s.writes[stream]!.window.take(upTo: wanted)
                    return n > 0 ? n : nil
                }
                return 0
            }
            if let result { return result }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s in
                    if s.closed != nil { return true }
                    if s.processes[stream] != nil {
                        if s.processes[stream]!.exited || s.processes[stream]!.stdinWindow.available > 0 { return true }
                        s.processes[stream]!.creditWaiters.append(c)
                        return false
                    }
                    if s.writes[stream] != nil {
                        if s.writes[stream]!.result != nil || s.writes[stream]!.window.available > 0 { return true }
                        s.writes[stream]!.creditWaiters.append(c)
                        return false
                    }
                    return true
                }
                if resumeNow { c.resume() }
            }
        }
    }

    /// The consumer took `count` bytes of `channel` output: return credit when due.
    func consumed(_ stream: UInt32, _ channel: Channel, _ count: Int) {
        let credit: UInt32? = state.withLock { s in
            guard s.processes[stream] != nil else { return nil }
            return channel == .stderr ? s.processes[stream]!.stderrWindow.consume(count) : s.processes[stream]!.stdoutWindow.consume(count)
        }
        if let credit { send(Frame(stream: stream, .credit(channel, bytes: credit))) }
    }

    func waitForExit(_ stream: UInt32) async throws -> ExitStatus {
        try await withCheckedThrowingContinuation { c in
            state.withLock { s in
                if let status = s.processes[stream]?.exit {
                    s.processes[stream] = nil
                    c.resume(returning: status)
                } else if let f = s.processes[stream]?.failure {
                    s.processes[stream] = nil
                    c.resume(throwing: AgentClientError.failed(f))
                } else if let e = s.closed {
                    c.resume(throwing: e)
                } else if s.processes[stream] == nil {
                    c.resume(throwing: AgentClientError.connection("the process was already waited for"))
                } else {
                    s.processes[stream]!.exitWaiter = c
                }
            }
        }
    }

    // MARK: Reader

    private func readLoop(_ initial: FrameDecoder) {
        var decoder = initial
        // Not zero-filled: a page of it costs memory only once a read reaches it, and an idle
        // sandbox's reads are a few small frames (one such buffer per sandbox in `kiln serve`).
        var buffer = [UInt8](unsafeUninitializedCapacity: 1 << 16) { _, count in count = 1 << 16 }
        var failure: AgentClientError?
        loop: while true {
            do {
                while let frame = try decoder.next() { try dispatch(frame) }
            } catch {
                if case .remote = error {} else { send(error.frame) }
                failure = .protocolError(error)
                break loop
            }
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                failure = .connection(n == 0 ? "the agent closed the connection" : "reading from the agent: \(Errno.current("read"))")
                break
            }
            activity.store(AgentClient.monotonicNanos(), ordering: .sequentiallyConsistent)
            decoder.feed(buffer[0..<n])
        }
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        failAll(failure ?? .connection("the connection ended"))
    }

    private func failAll(_ error: AgentClientError) {
        var resumers: [() -> Void] = []
        state.withLock { s in
            s.closed = error
            for (_, p) in s.processes {
                if let c = p.started { resumers.append { c.resume(throwing: error) } }
                if let c = p.exitWaiter { resumers.append { c.resume(throwing: error) } }
                p.output.finish()
                for c in p.creditWaiters { resumers.append { c.resume() } }
            }
            for (id, _) in s.processes where s.processes[id]?.exit == nil { s.processes[id] = nil }
            for (_, r) in s.reads {
                if let c = r.done { resumers.append { c.resume(throwing: error) } }
                if let c = r.opened { resumers.append { c.resume(throwing: error) } }
                r.sink?.finish(throwing: error)
            }
            for (_, w) in s.writes {
                if let c = w.done { resumers.append { c.resume(throwing: error) } }
                for c in w.creditWaiters { resumers.append { c.resume() } }
            }
            for (_, r) in s.requests { if let c = r.done { resumers.append { c.resume(throwing: error) } } }
            for (_, w) in s.watches {
                if let c = w.started { resumers.append { c.resume(throwing: error) } }
                w.events.finish(throwing: error)
            }
            s.requests.removeAll(); s.watches.removeAll()
            for (_, c) in s.pings { resumers.append { c.resume(throwing: error) } }
            for r in s.reseeds { resumers.append { r(.failure(error)) } }
            s.reads.removeAll(); s.writes.removeAll(); s.pings.removeAll(); s.reseeds.removeAll()
        }
        for r in resumers { r() }
    }

    /// Hands one frame to what waits for it. Output beyond the credit this side gave is a
    /// protocol error (thrown, and the session ends): a guest that ignored its window would
    /// otherwise grow this process's buffers for as long as the consumer does not read.
    private func dispatch(_ frame: Frame) throws(ProtocolError) {
        let s = frame.stream
        var resume: (() -> Void)?
        var overrun: ProtocolError?
        state.withLock { st in
            switch frame.message {
            case .pong(let pong):
                sequence.withLock { q in if let n = q.pings.removeValue(forKey: pong.nonce) { q.settled = max(q.settled, n) } }
                if let c = st.pings.removeValue(forKey: pong.nonce) { resume = { c.resume(returning: pong) } }
            case .reseeded(let e):
                if !st.reseeds.isEmpty { let r = st.reseeds.removeFirst(); resume = { r(.success(e)) } }
            case .protocolError(let code, let message):
                let e = AgentClientError.protocolError(.remote(code: code, message: message))
                st.closed = e
            case .started(let pid):
                if let c = st.processes[s]?.started { st.processes[s]!.started = nil; resume = { c.resume(returning: pid) } }
            case .failure(let failure):
                if let c = st.processes[s]?.started {
                    st.processes[s] = nil
                    resume = { c.resume(throwing: AgentClientError.failed(failure)) }
                } else if st.reads[s] != nil {
                    let r = st.reads.removeValue(forKey: s)!
                    r.sink?.finish(throwing: AgentClientError.failed(failure))
                    resume = { r.done?.resume(throwing: AgentClientError.failed(failure)); r.opened?.resume(throwing: AgentClientError.failed(failure)) }
                } else if st.writes[s] != nil {
                    st.writes[s]!.result = .failure(AgentClientError.failed(failure))
                    let waiters = st.writes[s]!.creditWaiters
                    st.writes[s]!.creditWaiters = []
                    if let c = st.writes[s]!.done {
                        st.writes[s] = nil
                        resume = { c.resume(throwing: AgentClientError.failed(failure)); waiters.forEach { $0.resume() } }
                    } else {
                        resume = { waiters.forEach { $0.resume() } }
                    }
                } else if let r = st.requests.removeValue(forKey: s) {
                    resume = { r.done?.resume(throwing: AgentClientError.failed(failure)) }
                } else if let w = st.watches.removeValue(forKey: s) {
                    if let c = w.started {
                        resume = { c.resume(throwing: AgentClientError.failed(failure)) }
                    } else if w.cancelled && failure.errno == ECANCELED {
                        w.events.finish()
                    } else {
                        w.events.finish(throwing: AgentClientError.failed(failure))
                    }
                } else if st.processes[s] != nil {
                    // A started process's stream ends early: another stream attached to it (EBUSY).
                    st.processes[s]!.output.finish()
                    st.processes[s]!.exited = true
                    let waiters = st.processes[s]!.creditWaiters
                    st.processes[s]!.creditWaiters = []
                    if let c = st.processes[s]!.exitWaiter {
                        st.processes[s] = nil
                        resume = { c.resume(throwing: AgentClientError.failed(failure)); waiters.forEach { $0.resume() } }
                    } else {
                        st.processes[s]!.failure = failure
                        resume = { waiters.forEach { $0.resume() } }
                    }
                }
            case .stdout(let bytes):
                guard st.processes[s] != nil else { break }
                do throws(ProtocolError) { try st.processes[s]!.stdoutWindow.receive(bytes.count, stream: s) } catch { overrun = error; break }
                st.processes[s]!.output.yield(.stdout(bytes))
            case .stderr(let bytes):
                guard st.processes[s] != nil else { break }
                do throws(ProtocolError) { try st.processes[s]!.stderrWindow.receive(bytes.count, stream: s) } catch { overrun = error; break }
                st.processes[s]!.output.yield(.stderr(bytes))
            case .credit(let channel, let bytes):
                if channel == .stdin, st.processes[s] != nil {
                    st.processes[s]!.stdinWindow.grant(bytes)
                    let waiters = st.processes[s]!.creditWaiters
                    st.processes[s]!.creditWaiters = []
                    resume = { waiters.forEach { $0.resume() } }
                } else if channel == .file, st.writes[s] != nil {
                    st.writes[s]!.window.grant(bytes)
                    let waiters = st.writes[s]!.creditWaiters
                    st.writes[s]!.creditWaiters = []
                    resume = { waiters.forEach { $0.resume() } }
                }
            case .exit(let status):
                guard st.processes[s] != nil else { break }
                st.processes[s]!.output.finish()
                st.processes[s]!.exited = true
                let waiters = st.processes[s]!.creditWaiters
                st.processes[s]!.creditWaiters = []
                if let c = st.processes[s]!.exitWaiter {
                    st.processes[s] = nil
                    resume = { c.resume(returning: status); waiters.forEach { $0.resume() } }
                } else {
                    st.processes[s]!.exit = status
                    resume = { waiters.forEach { $0.resume() } }
                }
            case .fileInfo(let info):
                st.reads[s]?.info = info
                if let c = st.reads[s]?.opened { st.reads[s]!.opened = nil; resume = { c.resume(returning: info) } }
            case .fileData(let bytes):
                guard st.reads[s] != nil else { break }
                do throws(ProtocolError) { try st.reads[s]!.window.receive(bytes.count, stream: s) } catch { overrun = error; break }
                if let sink = st.reads[s]?.sink {
                    sink.yield(bytes)
                } else if st.reads[s] != nil {
                    st.reads[s]!.contents.append(contentsOf: bytes)
                    if let credit = st.reads[s]!.window.consume(bytes.count) {
                        resume = { [self] in send(Frame(stream: s, .credit(.file, bytes: credit))) }
                    }
                }
            case .fileEnd:
                if let sink = st.reads[s]?.sink {
                    st.reads[s] = nil
                    sink.finish()
                } else if let r = st.reads.removeValue(forKey: s), let c = r.done {
                    let info = r.info ?? FileInfo(mode: 0, size: UInt64(r.contents.count), uid: 0, gid: 0)
                    resume = { c.resume(returning: (info, r.contents)) }
                }
            case .fileWritten(let bytes):
                guard st.writes[s] != nil else { break }
                if let c = st.writes[s]!.done {
                    st.writes[s] = nil
                    resume = { c.resume(returning: bytes) }
                } else {
                    st.writes[s]!.result = .success(bytes)
                }
            case .entry, .directoryMade, .done, .user:
                if let r = st.requests.removeValue(forKey: s), let c = r.done { resume = { c.resume(returning: frame.message) } }
            case .entries(let list):
                st.requests[s]?.entries.append(contentsOf: list)
            case .processes(let list):
                st.requests[s]?.processes.append(contentsOf: list)
            case .listEnd:
                if let r = st.requests.removeValue(forKey: s), let c = r.done {
                    let answer: Message = r.listsProcesses ? .processes(r.processes) : .entries(r.entries)
                    resume = { c.resume(returning: answer) }
                }
            case .watching:
                if let c = st.watches[s]?.started { st.watches[s]!.started = nil; resume = { c.resume() } }
            case .events(let list):
                if let w = st.watches[s] { for e in list { w.events.yield(e) } }
            default:
                break // the decoder refuses host-only types from the agent
            }
        }
        if let overrun { throw overrun }
        resume?()
    }
}

extension AgentClient.State {
    mutating func allocateStream() -> UInt32 {
        repeat {
            nextStream = nextStream == UInt32.max ? 1 : nextStream + 1
        } while processes[nextStream] != nil || reads[nextStream] != nil || writes[nextStream] != nil
            || requests[nextStream] != nil || watches[nextStream] != nil
        return nextStream
    }
}

struct RequestState {
    /// ListProcesses (its ListEnd answers with Processes) rather than ListDirectory.
    let listsProcesses: Bool
    var entries: [EntryInfo] = []
    var processes: [ProcessSummary] = []
    var done: CheckedContinuation<Message, any Error>?
}

struct WatchState {
    let events: AsyncThrowingStream<WatchEvent, any Error>.Continuation
    var started: CheckedContinuation<Void, any Error>?
    var cancelled = false
}

struct ProcessState {
    let output: AsyncStream<OutputChunk>.Continuation
    var started: CheckedContinuation<UInt32, any Error>?
    var stdinWindow = SendWindow()
    var stdoutWindow = ReceiveWindow()
    var stderrWindow = ReceiveWindow()
    var creditWaiters: [CheckedContinuation<Void, Never>] = []
    var exited = false
    var exit: ExitStatus?
    /// The stream ended with Failure instead of Exit (another stream attached to the process).
    var failure: Failure?
    var exitWaiter: CheckedContinuation<ExitStatus, any Error>?
}

struct ReadState {
    var info: FileInfo?
    var contents: [UInt8] = []
    var window = ReceiveWindow()
    var done: CheckedContinuation<(info: FileInfo, contents: [UInt8]), any Error>?
    /// A streamed read (`openFile`): the info goes to `opened`, the data to `sink`, and credit
    /// returns as the consumer takes the data.
    var opened: CheckedContinuation<FileInfo, any Error>?
    var sink: AsyncThrowingStream<[UInt8], any Error>.Continuation?
}

struct WriteState {
    var window = SendWindow()
    var creditWaiters: [CheckedContinuation<Void, Never>] = []
    var result: Result<UInt64, any Error>?
    var done: CheckedContinuation<UInt64, any Error>?
}

/// A directory watch in the guest (`AgentClient.watchDirectory`).
public final class RemoteWatch: Sendable {
    let client: AgentClient
    let stream: UInt32
    /// Changes in arrival order; ends after `cancel()`, throws when the agent ends the watch.
    public let events: AsyncThrowingStream<WatchEvent, any Error>

    init(client: AgentClient, stream: UInt32, events: AsyncThrowingStream<WatchEvent, any Error>) {
        self.client = client
        self.stream = stream
        self.events = events
    }

    /// Stops the watch; `events` ends once the agent confirms.
    public func cancel() { client.cancelWatch(stream) }
}

extension AgentClient {
    func cancelWatch(_ stream: UInt32) {
        let live = state.withLock { s in
            guard s.watches[stream] != nil else { return false }
            s.watches[stream]!.cancelled = true
            return true
        }
        if live { send(Frame(stream: stream, .cancel)) }
    }
}

/// A piece of a process's output.
public enum OutputChunk: Sendable, Equatable {
    case stdout([UInt8])
    case stderr([UInt8])
}
