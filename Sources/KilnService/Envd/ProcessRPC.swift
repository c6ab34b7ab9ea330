import AgentProtocol
import FoundationEssentials
import LinuxSys
import NIOCore
import Sandbox

/// envd's `process.Process` service (e2b-dev/infra packages/envd/spec/process/process.proto),
/// message shapes in proto3's JSON mapping, served over Kiln's agent protocol.
enum ProcessMessages {
    struct Size: Codable, Sendable { var cols: FlexInt?; var rows: FlexInt? }
    struct PTY: Codable, Sendable { var size: Size? }
    struct Config: Codable, Sendable {
        var cmd: String
        var args: [String]?
        var envs: [String: String]?
        var cwd: String?
    }
    struct Selector: Codable, Sendable { var pid: FlexInt?; var tag: String? }
    struct StartRequest: Decodable, Sendable { var process: Config?; var pty: PTY?; var tag: String?; var stdin: Bool? }
    struct ConnectRequest: Decodable, Sendable { var process: Selector? }
    struct UpdateRequest: Decodable, Sendable { var process: Selector?; var pty: PTY? }
    struct Input: Codable, Sendable { var stdin: Base64Bytes?; var pty: Base64Bytes? }
    struct SendInputRequest: Decodable, Sendable { var process: Selector?; var input: Input? }
    struct SendSignalRequest: Decodable, Sendable { var process: Selector?; var signal: Signal? }
    struct CloseStdinRequest: Decodable, Sendable { var process: Selector? }
    struct StreamInputEvent: Decodable, Sendable {
        struct Start: Decodable, Sendable { var process: Selector? }
        struct DataEvent: Decodable, Sendable { var input: Input? }
        var start: Start?
        var data: DataEvent?
    }
    struct Empty: Codable, Sendable {}

    /// `process.Signal`: its enum name or number.
    struct Signal: Decodable, Sendable {
        var number: Int32
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let n = try? c.decode(Int32.self) { number = n; return }
            switch try c.decode(String.self) {
            case "SIGNAL_SIGKILL": number = 9
            case "SIGNAL_SIGTERM": number = 15
            case "SIGNAL_UNSPECIFIED": number = 0
            case let s: throw DecodingError.dataCorruptedError(in: c, debugDescription: "unknown signal \(s)")
            }
        }
    }

    struct Event: Encodable, Sendable {
        struct Start: Encodable, Sendable { var pid: UInt32 }
        struct DataEvent: Encodable, Sendable { var stdout: Base64Bytes?; var stderr: Base64Bytes?; var pty: Base64Bytes? }
        struct End: Encodable, Sendable { var exitCode: Int32; var exited: Bool; var status: String; var error: String? }
        var start: Start?
        var data: DataEvent?
        var end: End?
        var keepalive: Empty?
    }
    /// StartResponse and ConnectResponse alike.
    struct EventResponse: Encodable, Sendable { var event: Event }

    struct Info: Encodable, Sendable { var config: Config; var pid: UInt32; var tag: String? }
    struct ListResponse: Encodable, Sendable { var processes: [Info] }
}

/// Serves the process RPCs for one request.
struct ProcessRPC {
    typealias M = ProcessMessages
    let sandbox: ServiceSandbox
    let request: HTTPRequest
    let response: HTTPResponseWriter
    /// The user named by the request's `Authorization: Basic base64(user:)` header, if any.
    let userName: String?

    func serve(method: String) async throws {
        switch method {
        case "Start": try await stream { try await start($0) }
        case "Connect": try await stream { try await connect($0) }
        case "List": try await unary { _ in
            M.ListResponse(processes: sandbox.processes.all.map { p in
                M.Info(config: M.Config(cmd: p.config.cmd, args: p.config.args, envs: p.config.envs, cwd: p.config.cwd), pid: p.pid, tag: p.tag)
            })
        }
        case "SendInput": try await unary { body in
            let r = try Connect.decode(M.SendInputRequest.self, body)
            let p = try find(r.process)
            try await write(r.input, to: p)
            return M.Empty()
        }
        case "SendSignal": try await unary { body in
            let r = try Connect.decode(M.SendSignalRequest.self, body)
            let p = try find(r.process)
            let signal = r.signal?.number ?? 0
            guard signal == 9 || signal == 15 else { throw EnvdError(.invalidArgument, "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM") }
            p.remote.signal(signal)
            return M.Empty()
        }
        case "CloseStdin": try await unary { body in
            let r = try Connect.decode(M.CloseStdinRequest.self, body)
            try find(r.process).remote.closeStdin()
            return M.Empty()
        }
        case "Update": try await unary { body in
            let r = try Connect.decode(M.UpdateRequest.self, body)
            let p = try find(r.process)
            if let size = r.pty?.size {
                p.remote.resize(rows: UInt16(clamping: size.rows?.value ?? 24), columns: UInt16(clamping: size.cols?.value ?? 80))
            }
            return M.Empty()
        }
        case "StreamInput": try await streamInput()
        default:
            try await Connect.respond(response, error: EnvdError(.unimplemented, "process.Process/\(method) is not implemented"))
        }
    }

    // MARK: Calls

    func start(_ out: Connect.Stream) async throws {
        guard let body = try await Connect.EnvelopeReader(request).next() else { throw EnvdError(.invalidArgument, "no StartRequest in the body") }
        let r = try Connect.decode(M.StartRequest.self, body)
        guard let config = r.process, !config.cmd.isEmpty else { throw EnvdError(.invalidArgument, "process.cmd is required") }
        let user = try await sandbox.user(userName)
        var pty: WindowSize?
        if let p = r.pty {
            pty = WindowSize(rows: UInt16(clamping: p.size?.rows?.value ?? 24), columns: UInt16(clamping: p.size?.cols?.value ?? 80))
        }
        var env = config.envs ?? [:]
        if pty != nil && env["TERM"] == nil { env["TERM"] = "xterm-256color" }
        // The call's deadline (the SDK's command `timeout`) bounds the process: the agent kills its
        // group when it passes, and the stream ends with deadline_exceeded.
        let deadline = request.header("connect-timeout-ms").flatMap { UInt32($0) } ?? 0
        let exec = Exec(argv: [config.cmd] + (config.args ?? []), environment: sandbox.environment(user: user, extra: env),
                        workingDirectory: config.cwd.flatMap { $0.isEmpty ? nil : $0 } ?? sandbox.defaultWorkingDirectory(user),
                        uid: user.uid, gid: user.gid, groups: user.groups, pty: pty, timeoutMillis: deadline)
        let recorded = ServiceProcess.Config(cmd: config.cmd, args: config.args ?? [], envs: config.envs ?? [:], cwd: config.cwd)
        let process: ServiceProcess
        do { process = try await sandbox.spawn(exec, tag: r.tag, config: recorded) } catch let e as AgentClientError {
            if case .failed(let f) = e {
                // envd answers a command that cannot start as an error of the Start call.
                throw EnvdError.from(errno: f.errno, f.message)
            }
            throw EnvdError(.unavailable, "the sandbox's agent is gone: \(e)")
        }
        if r.stdin != true && pty == nil { process.remote.closeStdin() }
        let subscriber = process.subscribe()
        sandbox.track(process)
        try await out.start()
        try await out.send(M.EventResponse(event: M.Event(start: .init(pid: process.pid))))
        try await relay(subscriber, of: process, to: out)
    }

    func connect(_ out: Connect.Stream) async throws {
        guard let body = try await Connect.EnvelopeReader(request).next() else { throw EnvdError(.invalidArgument, "no ConnectRequest in the body") }
        let r = try Connect.decode(M.ConnectRequest.self, body)
        let process = try find(r.process)
        let subscriber = process.subscribe()
        try await out.start()
        try await out.send(M.EventResponse(event: M.Event(start: .init(pid: process.pid))))
        try await relay(subscriber, of: process, to: out)
    }

    /// Streams a subscriber's events to the client until the process ends or the client leaves
    /// (the process keeps running then). Keep-alives every few seconds keep proxies from timing out.
    func relay(_ subscriber: ProcessSubscriber, of process: ServiceProcess, to out: Connect.Stream) async throws {
        let keepalive = Task(executorPreference: BlockingExecutor.service) {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 5_000_000_000)
                if Task.isCancelled { break }
                _ = await subscriber.send(.stdout([])) // an empty chunk becomes a keep-alive
            }
        }
        defer { keepalive.cancel(); process.unsubscribe(subscriber) }
        while let event = await subscriber.next() {
            switch event {
            case .stdout(let b) where b.isEmpty:
                try await out.send(M.EventResponse(event: M.Event(keepalive: M.Empty())))
            case .stdout(let b): try await out.send(M.EventResponse(event: M.Event(data: .init(stdout: Base64Bytes(b)))))
            case .stderr(let b): try await out.send(M.EventResponse(event: M.Event(data: .init(stderr: Base64Bytes(b)))))
            case .pty(let b): try await out.send(M.EventResponse(event: M.Event(data: .init(pty: Base64Bytes(b)))))
            case .end(let status, let error):
                try await out.send(M.EventResponse(event: M.Event(end: ProcessRPC.end(status, error: error))))
                try await out.finish(status?.timedOut == true ? EnvdError(.deadlineExceeded, "the command ran past its timeout and was killed") : nil)
                return
            }
        }
        try await out.finish(EnvdError(.unavailable, "the sandbox ended before the process did"))
    }

    /// envd's EndEvent, with Go's wording for the status ("exit status 1", "signal: killed").
    static func end(_ status: ExitStatus?, error: String?) -> M.Event.End {
        guard let status else { return M.Event.End(exitCode: -1, exited: false, status: "unknown", error: error) }
        switch status.termination {
        case .exited(let code): return M.Event.End(exitCode: code, exited: true, status: "exit status \(code)", error: nil)
        case .signaled(let signal):
            return M.Event.End(exitCode: -1, exited: false, status: "signal: \(signalName(signal))", error: nil)
        }
    }

    static func signalName(_ s: Int32) -> String {
        switch s {
        case 1: "hangup"
        case 2: "interrupt"
        case 3: "quit"
        case 6: "aborted"
        case 9: "killed"
        case 11: "segmentation fault"
        case 13: "broken pipe"
        case 15: "terminated"
        default: "signal \(s)"
        }
    }

    func streamInput() async throws {
        try Connect.checkCodec(request)
        let reader = Connect.EnvelopeReader(request)
        var process: ServiceProcess?
        do {
            while let message = try await reader.next() {
                let event = try Connect.decode(M.StreamInputEvent.self, message)
                if let start = event.start { process = try find(start.process) }
                if let data = event.data {
                    guard let p = process else { throw EnvdError(.invalidArgument, "input before the start event") }
                    try await write(data.input, to: p)
                }
            }
            let out = Connect.Stream(response)
            try await out.start()
            try await out.finish()
        } catch let e as EnvdError {
            let out = Connect.Stream(response)
            try await out.start()
            try await out.finish(e)
        }
    }

    // MARK: Helpers

    func find(_ selector: M.Selector?) throws(EnvdError) -> ServiceProcess {
        guard let selector, selector.pid != nil || selector.tag != nil else { throw EnvdError(.invalidArgument, "a process selector (pid or tag) is required") }
        let pid = selector.pid.map { UInt32(clamping: $0.value) }
        guard let p = sandbox.processes.find(pid: pid, tag: selector.tag) else {
            throw EnvdError(.notFound, "process with \(pid.map { "pid \($0)" } ?? "tag \(selector.tag!)") not found")
        }
        return p
    }

    func write(_ input: M.Input?, to p: ServiceProcess) async throws {
        guard let bytes = input?.stdin?.bytes ?? input?.pty?.bytes else { return }
        guard !bytes.isEmpty else { return }
        do { try await p.remote.write(bytes) } catch { throw EnvdError(.unavailable, "cannot write to the process: \(error)") }
    }

    func unary<T: Encodable>(_ body: (ByteBuffer) async throws -> T) async throws {
        try await Connect.unary(request, response, body)
    }

    /// A server-streaming call: errors before the stream started are the stream's only message.
    func stream(_ body: (Connect.Stream) async throws -> Void) async throws {
        let out = Connect.Stream(response)
        do {
            try Connect.checkCodec(request)
            try await body(out)
        } catch let e as EnvdError {
            if !response.headSent { try await out.start() }
            try await out.finish(e)
        } catch let e as HTTPError {
            if !response.headSent { try await out.start() }
            try await out.finish(EnvdError(.invalidArgument, e.message))
        }
    }
}
