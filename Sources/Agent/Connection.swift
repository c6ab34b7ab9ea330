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
    var scratch = [UInt8](repeating: 0, count: 1 << 18)

    init(socket: Int32, server: AgentServer) {
        self.socket = socket
        self.server = server
    }

    var hasOutput: Bool { outStart < out.count }
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

        case .exec(var exec):
            try checkNew(s)
            for entry in server.options.inheritedEnvironment {
                let name = entry.prefix(while: { $0 != "=" }) + "="
                if !exec.environment.contains(where: { $0.hasPrefix(name) }) { exec.environment.append(entry) }
            }
            switch ChildProcess.start(exec, stream: s, setIDs: server.setIDs, now: AgentServer.monotonicMillis()) {
            case .success(let p):
                processes[s] = p
                send(Frame(stream: s, .started(pid: UInt32(p.pid))))
            case .failure(let f):
                send(Frame(stream: s, .failure(f)))
            }
        case .stdin(let bytes):
            guard let p = processes[s] else { return }
            try p.stdinWindow.receive(bytes.count, stream: s)
            if p.input < 0 || p.stdinCloseRequested { return } // stdin already closed: discard
            p.pendingInput.append(contentsOf: bytes)
            writeInput(p)
        case .stdinClose:
            guard let p = processes[s] else { return }
            p.stdinCloseRequested = true
            writeInput(p)
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
            if let f = incoming.removeValue(forKey: s) {
                f.abandon()
                send(Frame(stream: s, .failure(Failure(errno: ECANCELED, message: "cancelled"))))
            } else if let f = outgoing.removeValue(forKey: s) {
                f.close()
                send(Frame(stream: s, .failure(Failure(errno: ECANCELED, message: "cancelled"))))
            }
        case .helloAck, .pong, .reseeded, .started, .failure, .stdout, .stderr, .exit, .fileInfo, .fileWritten:
            throw .unexpected(frame.message.type) // the decoder already refuses these from a host
        }
    }

    func checkNew(_ stream: UInt32) throws(ProtocolError) {
        if processes[stream] != nil || incoming[stream] != nil || outgoing[stream] != nil { throw .streamInUse(stream) }
    }

    /// Moves pending stdin into the process; returns credit as it goes.
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
            if let credit = p.stdinWindow.consume(n) { send(Frame(stream: p.stream, .credit(.stdin, bytes: credit))) }
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

    /// Reads what the process wrote, within the host's credit, and queues it as frames.
    func readOutput(_ p: ChildProcess, stderr: Bool) {
        let fd = stderr ? p.errorOutput : p.output
        let available = stderr ? p.stderrWindow.available : p.stdoutWindow.available
        let wanted = Int(min(available, UInt64(scratch.count)))
        guard wanted > 0, fd >= 0 else { return }
        let n = scratch.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, wanted) }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { return }
        if n <= 0 {
            // End of file; on a PTY, EIO once the last slave descriptor is closed.
            if stderr { p.errorOutputOpen = false } else { p.outputOpen = false }
            return
        }
        if stderr { _ = p.stderrWindow.take(upTo: n) } else { _ = p.stdoutWindow.take(upTo: n) }
        scratch.withUnsafeBytes { raw in
            try? Frame.encodeData(stderr ? .stderr : .stdout, stream: p.stream,
                                  bytes: UnsafeRawBufferPointer(rebasing: raw[0..<n]), into: &out)
        }
    }

    /// Sends Exit for processes that have ended and whose output is all sent.
    func finishProcesses() {
        for p in processes.values where p.waitStatus != nil {
            // A pipe whose writer has exited can still hold data: drain it while credit allows.
            if p.outputOpen && p.stdoutWindow.available > 0 && unsentCount < AgentServer.outputHighWater { readOutput(p, stderr: false) }
            if p.errorOutputOpen && p.stderrWindow.available > 0 && unsentCount < AgentServer.outputHighWater { readOutput(p, stderr: true) }
            guard p.finished else { continue }
            send(Frame(stream: p.stream, .exit(p.exitStatus)))
            p.closeAll()
            processes[p.stream] = nil
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

    /// The host is gone: kill what it started, drop partial files.
    func abandon(into abandoned: inout Set<pid_t>) {
        for p in processes.values {
            if p.waitStatus == nil { p.send(SIGKILL); abandoned.insert(p.pid) }
            p.closeAll()
        }
        processes.removeAll()
        for f in incoming.values { f.abandon() }
        for f in outgoing.values { f.close() }
        incoming.removeAll(); outgoing.removeAll()
        Glibc.close(socket)
    }
}
