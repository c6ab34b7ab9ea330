import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing

/// The agent's behaviour as a user of the library sees it, against the real kiln-agent binary
/// on the host (the same code that runs as the guest's PID 1). Guest-side runs are in
/// KilnTests/RunCommandTests.
@Suite struct AgentTests {
    let agent: HostAgent
    let client: AgentClient

    init() throws {
        agent = try HostAgent()
        client = try agent.connect()
    }

    func run(_ argv: [String], env: [String] = ["PATH=/usr/bin:/bin"], cwd: String = "", timeoutMillis: UInt32 = 0)
        async throws -> (stdout: String, stderr: String, status: AgentProtocol.ExitStatus) {
        let p = try await client.exec(Exec(argv: argv, environment: env, workingDirectory: cwd, timeoutMillis: timeoutMillis))
        p.closeStdin()
        let r = try await p.collect()
        return (String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self), r.status)
    }

    @Test func handshakeReportsTheAgentAndPingAnswers() async throws {
        #expect(client.agentSoftware.hasPrefix("kiln-agent"))
        #expect(client.version == Wire.version)
        let pong = try await client.ping()
        #expect(pong.processes == 0)
    }

    @Test func exitCodesAndSignalsArrive() async throws {
        #expect(try await run(["true"]).status == AgentProtocol.ExitStatus(.exited(code: 0)))
        #expect(try await run(["false"]).status == AgentProtocol.ExitStatus(.exited(code: 1)))
        #expect(try await run(["sh", "-c", "exit 42"]).status == AgentProtocol.ExitStatus(.exited(code: 42)))
        #expect(try await run(["sh", "-c", "kill -9 $$"]).status == AgentProtocol.ExitStatus(.signaled(signal: 9)))
    }

    @Test func stdoutAndStderrStayApart() async throws {
        let r = try await run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(r.stdout == "out\n")
        #expect(r.stderr == "err\n")
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 3)))
    }

    @Test func oneMebibyteOfStdinComesBackThroughCatUnchanged() async throws {
        var input = [UInt8](repeating: 0, count: 1 << 20)
        var rng = SystemRandomNumberGenerator()
        for i in input.indices { input[i] = UInt8.random(in: 0...255, using: &rng) }
        let p = try await client.exec(Exec(argv: ["cat"], environment: ["PATH=/usr/bin:/bin"]))
        async let collected = p.collect()
        try await p.write(input)
        p.closeStdin()
        let r = try await collected
        #expect(r.stdout.count == input.count)
        #expect(sha256Hex(r.stdout) == sha256Hex(input))
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func largeOutputIsCompleteBeforeTheExitStatus() async throws {
        let r = try await run(["head", "-c", "5000000", "/dev/zero"])
        #expect(r.stdout.utf8.count == 5_000_000)
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func environmentAndWorkingDirectoryAreExactlyWhatWasAsked() async throws {
        let r = try await run(["sh", "-c", "echo $GREETING; pwd; echo ${HOME:-no-home}"], env: ["PATH=/usr/bin:/bin", "GREETING=hello there"], cwd: "/tmp")
        #expect(r.stdout == "hello there\n/tmp\nno-home\n")
    }

    @Test func timeoutKillsTheProcessAndSaysSo() async throws {
        let r = try await run(["sleep", "30"], timeoutMillis: 300)
        #expect(r.status == AgentProtocol.ExitStatus(.signaled(signal: 9), timedOut: true))
    }

    @Test func sigtermReachesTheProcess() async throws {
        let p = try await client.exec(Exec(argv: ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"],
                                           environment: ["PATH=/usr/bin:/bin"]))
        var out = ""
        for await chunk in p.output {
            if case .stdout(let b) = chunk { out += String(decoding: b, as: UTF8.self) }
            if out == "ready\n" { p.signal(SIGTERM) }
        }
        #expect(out == "ready\ngot-term\n")
        #expect(try await p.wait() == AgentProtocol.ExitStatus(.exited(code: 7)))
    }

    @Test func aPTYSessionHasATerminalOfTheRequestedSize() async throws {
        #expect(client.capabilities.contains(.pty))
        let p = try await client.exec(Exec(argv: ["sh", "-c", "tty; stty size"], environment: ["PATH=/usr/bin:/bin"],
                                           pty: WindowSize(rows: 33, columns: 101)))
        let r = try await p.collect()
        let text = String(decoding: r.stdout, as: UTF8.self)
        #expect(text.hasPrefix("/dev/pts/"), "\(text)")
        #expect(text.contains("33 101"), "\(text)")
        #expect(r.stderr.isEmpty)
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func ptyInputReachesTheProcessAndEOFEndsIt() async throws {
        let p = try await client.exec(Exec(argv: ["cat"], environment: ["PATH=/usr/bin:/bin"], pty: WindowSize(rows: 24, columns: 80)))
        try await p.write(Array("typed line\n".utf8))
        p.closeStdin()
        let r = try await p.collect()
        #expect(String(decoding: r.stdout, as: UTF8.self).contains("typed line"))
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func aMissingCommandFailsWithENOENT() async throws {
        do {
            _ = try await client.exec(Exec(argv: ["no-such-command-kiln"], environment: ["PATH=/usr/bin:/bin"]))
            Issue.record("exec of a missing command succeeded")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == ENOENT)
            #expect(f.message.contains("command not found"))
        }
        do {
            _ = try await client.exec(Exec(argv: ["true"], environment: ["PATH=/usr/bin:/bin"], workingDirectory: "/no/such/dir"))
            Issue.record("exec in a missing directory succeeded")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == ENOENT)
            #expect(f.message.contains("/no/such/dir"))
        }
    }

    @Test func tenMebibyteFileGoesInAndComesBackIdentical() async throws {
        var data = [UInt8](repeating: 0, count: 10 << 20)
        var rng = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: data.count, by: 8) {
            withUnsafeBytes(of: rng.next() as UInt64) { for j in 0..<8 { data[i + j] = $0[j] } }
        }
        let path = "/tmp/kiln-agent-test-\(getpid())/sub/file.bin"
        defer { unlink(path); rmdir("/tmp/kiln-agent-test-\(getpid())/sub"); rmdir("/tmp/kiln-agent-test-\(getpid())") }
        let written = try await client.writeFile(path, contents: data, mode: 0o640, options: [.createParents])
        #expect(written == UInt64(data.count))
        let (info, back) = try await client.readFile(path)
        #expect(info.mode & 0o7777 == 0o640)
        #expect(info.mode & 0o170000 == 0o100000, "a regular file")
        #expect(info.size == UInt64(data.count))
        #expect(sha256Hex(back) == sha256Hex(data))
        do {
            _ = try await client.writeFile(path, contents: [1], options: [.exclusive])
            Issue.record("exclusive write over an existing file succeeded")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == EEXIST)
        }
        do {
            _ = try await client.readFile("/tmp")
            Issue.record("reading a directory succeeded")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == EISDIR)
        }
    }

    @Test func theAgentKeepsServingAfterAMalformedFrame() async throws {
        let raw = try agent.rawConnection()
        // A frame header with an unknown type 0x7F.
        let garbage: [UInt8] = [0, 0, 0, 0, 0x7F, 0, 0, 0, 0, 0, 0, 0]
        _ = garbage.withUnsafeBytes { write(raw.raw, $0.baseAddress, $0.count) }
        var decoder = FrameDecoder(from: .agent)
        decoder.feed(readAll(raw.raw))
        let frame = try decoder.next()
        guard case .protocolError(let code, let message)? = frame?.message else {
            Issue.record("expected a ProtocolError frame, got \(String(describing: frame))"); return
        }
        #expect(code == 3)
        #expect(message.contains("unknown message type"))
        // The connection is closed, the agent is not: a new session runs commands.
        let again = try agent.connect()
        let p = try await again.exec(Exec(argv: ["true"], environment: ["PATH=/usr/bin:/bin"]))
        #expect(try await p.wait() == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func anIncompatibleHostIsToldWhy() throws {
        let raw = try agent.rawConnection()
        let hello = try Frame(stream: 0, .hello(Hello(version: Version(major: 2, minor: 0), software: "future"))).encoded()
        _ = hello.withUnsafeBytes { write(raw.raw, $0.baseAddress, $0.count) }
        var decoder = FrameDecoder(from: .agent)
        decoder.feed(readAll(raw.raw))
        guard case .protocolError(let code, let message)? = try decoder.next()?.message else {
            Issue.record("expected a ProtocolError"); return
        }
        #expect(code == 2)
        #expect(message.contains("this side speaks 1.0, the peer 2.0"))
    }
}
