import AgentProtocol
import CLinux
import Glibc
import LinuxSys

/// One host connection: its frame decoder, unsent output and open streams.
final class Connection {
    let socket: Int32
    unowned let server: AgentServer
    var decoder = FrameDecoder(from: .host)
    var handshakeDone = false
    var closed = false
    /// After a protocol error: send what is queued, then close.
    var closing = false
    var out: [UInt8] = []
    var outStart = 0
    var processes: [UInt32: ChildProcess] = [:]
    var incoming: [UInt32: IncomingFile] = [:]
    var outgoing: [UInt32: OutgoingFile] = [:]
    var listings: [UInt32: DirectoryListing] = [:]
    var watches: [UInt32: DirectoryWatch] = [:]
    var scratch = [UInt8](repeating: 0, count: 1 << 18)

    init(socket: Int32, server: AgentServer) {
        self.socket = socket
        self.server = server
    }

    var hasOutput: Bool { outStart < out.count }
    /// A listing can go on now: the event loop must not sleep in poll.
    var hasPendingWork: Bool { !listings.isEmpty && unsentCount < AgentServer.outputHighWater && !closed }
    var unsentCount: Int { out.count - outStart }

    func log(_ text: String) { writeRaw(2, "kiln-agent: \(text)\n") }

    func send(_ frame: Frame) {
        do { try frame.encode(into: &out) } catch { log("cannot encode \(frame.message.type): \(error)") }
    }

    func flush() {
        while hasOutput && !closed {
            let n = out.withUnsafeBytes { Glibc.send(socket, $0.baseAddress! + outStart, out.count - outStart, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                closed = true
                return
            }
            outStart += n
        }
        if outStart == out.count {
            out.removeAll(keepingCapacity: out.capacity <= 4 << 20)
            outStart = 0
            if closing { closed = true }
        } else if outStart > 1 << 20 && outStart > out.count / 2 {
            out.removeSubrange(0..<outStart)
            outStart = 0
        }
    }

    func processFrames() {
        while !closing {
            let frame: Frame?
            do { frame = try decoder.next() } catch {
                if case .remote = error { log("host reported: \(error)") } else { send(error.frame); log("protocol error: \(error)") }
                closing = true
                return
            }
            guard let frame else { return }
            do { try handle(frame) } catch {
                send(error.frame)
                log("protocol error: \(error)")
                closing = true
            }
        }
    }

    func handle(_ frame: Frame) throws(ProtocolError) {
        let s = frame.stream
        if !handshakeDone {
            guard case .hello(let hello) = frame.message else { throw .unexpected(frame.message.type) }
            let ack = try Handshake.answer(hello, software: server.options.software, capabilities: server.capabilities)
            send(Frame(stream: 0, .helloAck(ack)))
            handshakeDone = true
            return
        }
        switch frame.message {
        case .hello: throw .unexpected(.hello)
        case .ping(let nonce):
            let uptime = AgentServer.monotonicMillis() - server.started
            send(Frame(stream: 0, .pong(Pong(nonce: nonce, uptimeMillis: uptime, processes: UInt32(server.runningProcesses)))))
        case .setTime(let seconds, let nanoseconds):
            var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int(nanoseconds))
            if clock_settime(CLOCK_REALTIME, &ts) != 0 { log("cannot set the clock: \(String(cString: strerror(errno)))") }
        case .reseed(let bytes):
            send(Frame(stream: 0, .reseeded(errno: kiln_add_entropy(bytes, bytes.count))))
        case .shutdown(let grace):
            server.beginShutdown(graceMillis: grace)
        case .protocolError(let code, let message):
            log("host reported protocol error \(code): \(message)")
            closing = true

        case .exec(let exec):
            try checkNew(s)
            start(Spawn(exec), stream: s)
        case .spawn(let spawn):
            try checkNew(s)
            start(spawn, stream: s)
        case .attach(let pid):
            try checkNew(s)
            attach(pid: pid, stream: s)
        case .listProcesses:
            try checkNew(s)
            listProcesses(stream: s)
        case .signalProcess(let pid, let signo):
            try checkNew(s)
            if let p = server.process(pid: pid), p.waitStatus == nil {
                p.send(signo)
                send(Frame(stream: s, .done))
            } else {
                send(Frame(stream: s, .failure(Failure(errno: ESRCH, message: "no process \(pid) started by the agent is running"))))
            }
        case .stdin(let bytes):
            guard let p = processes[s] else { return }
            try p.stdinWindow.receive(bytes.count, stream: s)
            if p.input < 0 || p.stdinCloseRequested { return } // stdin already closed: discard
            p.pendingInput.append(contentsOf: bytes)
            server.writeInput(p)
        case .stdinClose:
            guard let p = processes[s] else { return }
            p.stdinCloseRequested = true
            server.writeInput(p)
        case .credit(let channel, let bytes):
            switch channel {
            case .stdout: processes[s]?.stdoutWindow.grant(bytes)
            case .stderr: processes[s]?.stderrWindow.grant(bytes)
            case .file: outgoing[s]?.window.grant(bytes)
            case .stdin: throw .invalidValue(.credit, field: "channel")
            }
        case .resize(let size):
            if let p = processes[s], p.pty { _ = kiln_set_window_size(p.output, size.rows, size.columns) }
        case .signal(let signo):
            processes[s]?.send(signo)

        case .writeFile(let request):
            try checkNew(s)
            switch IncomingFile.open(request, stream: s) {
            case .success(let f): incoming[s] = f
            case .failure(let f): send(Frame(stream: s, .failure(f)))
            }
        case .fileData(let bytes):
            guard let f = incoming[s] else { return }
            try f.window.receive(bytes.count, stream: s)
            if let failure = f.write(bytes) {
                f.abandon(); incoming[s] = nil
                send(Frame(stream: s, .failure(failure)))
                return
            }
            if let credit = f.window.consume(bytes.count) { send(Frame(stream: s, .credit(.file, bytes: credit))) }
        case .fileEnd:
            guard let f = incoming[s] else { return }
            incoming[s] = nil
            if let failure = f.finish(setIDs: server.setIDs) {
                f.abandon()
                send(Frame(stream: s, .failure(failure)))
            } else {
                send(Frame(stream: s, .fileWritten(bytes: f.bytes)))
            }
        case .readFile(let path):
            try checkNew(s)
            switch OutgoingFile.open(path, stream: s) {
            case .success(let (f, info)):
                outgoing[s] = f
                send(Frame(stream: s, .fileInfo(info)))
            case .failure(let f): send(Frame(stream: s, .failure(f)))
            }
        case .cancel:
            let cancelled = Frame(stream: s, .failure(Failure(errno: ECANCELED, message: "cancelled")))
            if let f = incoming.removeValue(forKey: s) {
                f.abandon()
                send(cancelled)
            } else if let f = outgoing.removeValue(forKey: s) {
                f.close()
                send(cancelled)
            } else if let l = listings.removeValue(forKey: s) {
                l.close()
                send(cancelled)
            } else if let w = watches.removeValue(forKey: s) {
                w.close()
                send(cancelled)
            }

        case .stat(let path):
            try checkNew(s)
            reply(s, Filesystem.entry(path, users: UserDatabase.load()).map { .entry($0) })
        case .listDirectory(let path, let depth):
            try checkNew(s)
            switch DirectoryListing.open(path, depth: depth, stream: s) {
            case .success(let l): listings[s] = l
            case .failure(let f): send(Frame(stream: s, .failure(f)))
            }
        case .makeDirectory(let request):
            try checkNew(s)
            reply(s, Filesystem.makeDirectory(request).map { .directoryMade(created: $0) })
        case .rename(let from, let to):
            try checkNew(s)
            reply(s, Filesystem.rename(from: from, to: to, users: UserDatabase.load()).map { .entry($0) })
        case .remove(let path):
            try checkNew(s)
            send(Frame(stream: s, Filesystem.remove(path).map { .failure($0) } ?? .done))
        case .watchDirectory(let path, let recursive):
            try checkNew(s)
            switch DirectoryWatch.open(path, recursive: recursive, stream: s) {
            case .success(let w):
                watches[s] = w
                send(Frame(stream: s, .watching))
            case .failure(let f): send(Frame(stream: s, .failure(f)))
            }
        case .lookupUser(let name):
            try checkNew(s)
            if let user = UserDatabase.load().lookup(name) {
                send(Frame(stream: s, .user(user)))
            } else {
                send(Frame(stream: s, .failure(Failure(errno: ENOENT, message: "no user '\(name)' in /etc/passwd"))))
            }

        case .helloAck, .pong, .reseeded, .started, .failure, .stdout, .stderr, .exit, .fileInfo, .fileWritten,
             .processes, .entry, .entries, .listEnd, .directoryMade, .done, .watching, .events, .user:
            throw .unexpected(frame.message.type) // the decoder already refuses these from a host
        }
    }

    func reply(_ stream: UInt32, _ result: Result<Message, Failure>) {
        switch result {
        case .success(let m): send(Frame(stream: stream, m))
        case .failure(let f): send(Frame(stream: stream, .failure(f)))
        }
    }

    func checkNew(_ stream: UInt32) throws(ProtocolError) {
        if processes[stream] != nil || incoming[stream] != nil || outgoing[stream] != nil || listings[stream] != nil
            || watches[stream] != nil { throw .streamInUse(stream) }
    }

    /// Exec and Spawn: start the process attached to this stream.
    func start(_ spawn: Spawn, stream s: UInt32) {
        var environment = spawn.exec.environment
        for entry in server.options.inheritedEnvironment {
            let name = entry.prefix(while: { $0 != "=" }) + "="
            if !environment.contains(where: { $0.hasPrefix(name) }) { environment.append(entry) }
        }
        switch ChildProcess.start(spawn, environment: environment, id: server.nextID(), stream: s, setIDs: server.setIDs,
                                  now: AgentServer.monotonicMillis(), cgroups: server.cgroups,
                                  inGuest: server.options.isInit) {
        case .success(let p):
            p.connection = self
            processes[s] = p
            server.processes[p.id] = p
            send(Frame(stream: s, .started(pid: UInt32(p.pid))))
        case .failure(let f):
            send(Frame(stream: s, .failure(f)))
        }
    }

    /// Attach: this stream takes the process over; a stream attached to it before (on any
    /// connection) ends with Failure EBUSY. Buffered output goes out first.
    func attach(pid: UInt32, stream s: UInt32) {
        guard let p = server.process(pid: pid) else {
            send(Frame(stream: s, .failure(Failure(errno: ESRCH, message: "no process \(pid) started by the agent"))))
            return
        }
        if let previous = p.connection {
            previous.processes[p.stream] = nil
            previous.send(Frame(stream: p.stream, .failure(Failure(errno: EBUSY, message: "process \(pid) was attached by another stream"))))
        }
        p.attach(to: self, stream: s)
        processes[s] = p
        send(Frame(stream: s, .started(pid: pid)))
        server.sendBuffered(p)
    }

    /// ListProcesses: Processes frames of at most about 256 KiB each, then ListEnd.
    func listProcesses(stream s: UInt32) {
        var batch: [ProcessSummary] = []
        var bytes = 0
        for p in server.processes.values.sorted(by: { $0.id < $1.id }) {
            let summary = p.summary
            let size = 32 + summary.tag.utf8.count + summary.workingDirectory.utf8.count
                + (summary.argv + summary.environment).reduce(0) { $0 + 4 + $1.utf8.count }
            if !batch.isEmpty && bytes + size > DirectoryListing.frameTarget {
                send(Frame(stream: s, .processes(batch)))
                batch = []; bytes = 0
            }
            batch.append(summary)
            bytes += size
        }
        if !batch.isEmpty { send(Frame(stream: s, .processes(batch))) }
        send(Frame(stream: s, .listEnd))
    }

    /// Moves listings on, a batch per turn of the event loop, while the host keeps reading.
    func pumpListings() {
        for l in listings.values where unsentCount < AgentServer.outputHighWater {
            let frames = l.pump()
            for f in frames { send(f) }
            if case .failure? = frames.last?.message { listings[l.stream] = nil }
            if case .listEnd? = frames.last?.message { listings[l.stream] = nil }
        }
    }

    /// The watch's inotify descriptor is readable: send its events (or its end).
    func readWatch(_ s: UInt32) {
        guard let w = watches[s] else { return }
        let (events, end) = w.read()
        // One read can hold thousands of events with long paths: frames of about 256 KiB.
        var batch: [WatchEvent] = []
        var bytes = 0
        for e in events {
            if bytes > DirectoryListing.frameTarget { send(Frame(stream: s, .events(batch))); batch = []; bytes = 0 }
            batch.append(e)
            bytes += 5 + e.name.utf8.count
        }
        if !batch.isEmpty { send(Frame(stream: s, .events(batch))) }
        if let end {
            w.close()
            watches[s] = nil
            send(Frame(stream: s, .failure(end)))
        }
    }

    /// Sends file data within the host's credit.
    func pumpFiles() {
        for f in outgoing.values {
            while f.window.available > 0 && unsentCount < AgentServer.outputHighWater {
                let wanted = Int(min(f.window.available, UInt64(scratch.count)))
                let n = scratch.withUnsafeMutableBytes { Glibc.read(f.fd, $0.baseAddress, wanted) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 {
                    let failure = errnoFailure("read")
                    f.close(); outgoing[f.stream] = nil
                    send(Frame(stream: f.stream, .failure(failure)))
                    break
                }
                if n == 0 {
                    f.close(); outgoing[f.stream] = nil
                    send(Frame(stream: f.stream, .fileEnd))
                    break
                }
                _ = f.window.take(upTo: n)
                scratch.withUnsafeBytes { raw in
                    try? Frame.encodeData(.fileData, stream: f.stream, bytes: UnsafeRawBufferPointer(rebasing: raw[0..<n]), into: &out)
                }
            }
        }
    }

    /// The host is gone: detach the kept processes, kill the others, drop partial files and
    /// stop listings and watches.
    func abandon() {
        for p in processes.values {
            if p.keep {
                p.detach()
                continue
            }
            if p.waitStatus == nil { p.send(SIGKILL); server.abandoned.insert(p.pid) }
            p.closeAll()
            server.forget(p)
        }
        processes.removeAll()
        for f in incoming.values { f.abandon() }
        for f in outgoing.values { f.close() }
        for l in listings.values { l.close() }
        for w in watches.values { w.close() }
        incoming.removeAll(); outgoing.removeAll(); listings.removeAll(); watches.removeAll()
        Glibc.close(socket)
    }
}
