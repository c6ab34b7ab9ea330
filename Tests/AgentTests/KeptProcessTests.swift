import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing

/// Protocol 1.2's processes that outlive their connection, against the real kiln-agent: what a
/// service sees across a reconnect (a restarted service, or a restored snapshot's reset vsock).
@Suite struct KeptProcessTests {
    let agent: HostAgent
    let env = ["PATH=/usr/bin:/bin"]

    init() throws {
        agent = try HostAgent()
    }

    /// Reads the process's stdout until it ends with `suffix`.
    func read(_ p: RemoteProcess, until suffix: String) async -> String {
        var text = ""
        for await chunk in p.output {
            if case .stdout(let b) = chunk { text += String(decoding: b, as: UTF8.self) }
            if text.hasSuffix(suffix) { break }
        }
        return text
    }

    /// Waits (up to a minute: a loaded CI host can be slow) until the agent has seen a closed
    /// connection: the process is no longer attached. Sleeps without holding a cooperative thread.
    func detached(_ pid: UInt32, on client: AgentClient, exited: Bool = false) async throws -> ProcessSummary? {
        for _ in 0..<6000 {
            if let p = try await client.listProcesses().first(where: { $0.pid == pid }),
               !p.flags.contains(.attached), !exited || p.flags.contains(.exited) { return p }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        return nil
    }

    @Test func aKeptProcessSurvivesItsConnectionAndIsAttachedFromAnother() async throws {
        let flag = agent.socketPath + ".flag"
        unlink(flag)
        defer { unlink(flag) }
        let first = try agent.connect()
        let script = "echo one; while [ ! -e \(flag) ]; do sleep 0.02; done; echo two; echo err >&2; read line; echo \"got $line\"; exit 7"
        let p = try await first.exec(Exec(argv: ["sh", "-c", script], environment: env, workingDirectory: "/tmp"), keep: true, tag: "job-1")
        #expect(await read(p, until: "one\n") == "one\n")
        first.close()

        let second = try agent.connect()
        let summary = try #require(try await detached(p.pid, on: second))
        #expect(summary.tag == "job-1")
        #expect(summary.argv == ["sh", "-c", script])
        #expect(summary.environment == env)
        #expect(summary.workingDirectory == "/tmp")
        #expect(summary.flags == [.kept])
        // Output written while nobody is attached waits in the agent.
        close(open(flag, O_CREAT | O_WRONLY, 0o644))
        usleep(200_000)
        let again = try await second.attach(pid: p.pid)
        #expect(again.pid == p.pid)
        #expect(try await second.listProcesses().first { $0.pid == p.pid }?.flags == [.kept, .attached])
        try await again.write(Array("hello\n".utf8))
        let r = try await again.collect()
        #expect(String(decoding: r.stdout, as: UTF8.self) == "two\ngot hello\n")
        #expect(String(decoding: r.stderr, as: UTF8.self) == "err\n")
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 7)))
        #expect(try await second.listProcesses().contains { $0.pid == p.pid } == false)
    }

    @Test func attachingToAProcessThatExitedWhileDetachedGivesItsOutputAndExitCode() async throws {
        // It exits only once the test sees it detached: exiting while still attached would hand
        // its Exit to the first connection (a race a loaded host loses).
        let flag = agent.socketPath + ".exit"
        unlink(flag)
        defer { unlink(flag) }
        let first = try agent.connect()
        let script = "read x; while [ ! -e \(flag) ]; do sleep 0.02; done; echo bye; echo $x; exit 3"
        let p = try await first.exec(Exec(argv: ["sh", "-c", script], environment: env), keep: true)
        try await p.write(Array("input\n".utf8))
        first.close()
        let second = try agent.connect()
        _ = try #require(try await detached(p.pid, on: second))
        close(open(flag, O_CREAT | O_WRONLY, 0o644))
        let found = try await detached(p.pid, on: second, exited: true)
        let listed = try await second.listProcesses()
        let summary = try #require(found, "\(listed)")
        #expect(summary.flags == [.kept, .exited])
        let r = try await second.attach(pid: p.pid).collect()
        #expect(String(decoding: r.stdout, as: UTF8.self) == "bye\ninput\n")
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 3)))
        // Collected: the status is gone.
        #expect(try await second.listProcesses().isEmpty)
        #expect(await attachFailure(second, pid: p.pid) == ESRCH)
    }

    @Test func aProcessNotKeptDiesWithItsConnection() async throws {
        let first = try agent.connect()
        let p = try await first.exec(Exec(argv: ["sleep", "600"], environment: env), keep: false, tag: "short")
        #expect(try await first.listProcesses().map(\.tag) == ["short"])
        first.close()
        let second = try agent.connect()
        var gone = false
        for _ in 0..<6000 where !gone {
            gone = try await second.listProcesses().isEmpty
            if !gone { try await Task.sleep(nanoseconds: 10_000_000) }
        }
        #expect(gone)
        #expect(await attachFailure(second, pid: p.pid) == ESRCH)
    }

    @Test func aSecondAttachTakesTheProcessOverAndTheFirstStreamIsToldWhy() async throws {
        let a = try agent.connect()
        let p = try await a.exec(Exec(argv: ["sh", "-c", "echo ready; read x; echo \"after $x\""], environment: env), keep: true)
        #expect(await read(p, until: "ready\n") == "ready\n")
        let b = try agent.connect()
        let taken = try await b.attach(pid: p.pid)
        do {
            _ = try await p.wait()
            Issue.record("the first stream still waits for an exit")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == EBUSY)
        }
        try await taken.write(Array("b\n".utf8))
        let r = try await taken.collect()
        #expect(String(decoding: r.stdout, as: UTF8.self) == "after b\n")
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    @Test func signalByPidReachesAKeptProcessWithoutAttaching() async throws {
        let first = try agent.connect()
        let p = try await first.exec(Exec(argv: ["sleep", "600"], environment: env), keep: true)
        first.close()
        let second = try agent.connect()
        _ = try #require(try await detached(p.pid, on: second))
        try await second.signal(pid: p.pid, SIGKILL)
        _ = try #require(try await detached(p.pid, on: second, exited: true))
        let r = try await second.attach(pid: p.pid).collect()
        #expect(r.status == AgentProtocol.ExitStatus(.signaled(signal: SIGKILL)))
        do {
            try await second.signal(pid: p.pid, SIGTERM)
            Issue.record("signal to a collected process succeeded")
        } catch AgentClientError.failed(let f) {
            #expect(f.errno == ESRCH)
        }
    }

    @Test func aDetachedProcessBlocksOnceOneWindowIsBufferedAndLosesNothing() async throws {
        let flag = agent.socketPath + ".flag"
        unlink(flag)
        defer { unlink(flag) }
        let first = try agent.connect()
        // 3 MiB of output once detached: one window is buffered, the rest waits in the pipe and the process.
        let script = "while [ ! -e \(flag) ]; do sleep 0.02; done; head -c 3145728 /dev/zero"
        let p = try await first.exec(Exec(argv: ["sh", "-c", script], environment: env), keep: true)
        first.close()
        let second = try agent.connect()
        _ = try #require(try await detached(p.pid, on: second))
        close(open(flag, O_CREAT | O_WRONLY, 0o644))
        usleep(300_000)
        #expect(try await second.listProcesses().first { $0.pid == p.pid }?.flags.contains(.exited) == false)
        let r = try await second.attach(pid: p.pid).collect()
        #expect(r.stdout.count == 3 << 20)
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)))
    }

    func attachFailure(_ client: AgentClient, pid: UInt32) async -> Int32? {
        do {
            _ = try await client.attach(pid: pid)
        } catch AgentClientError.failed(let f) {
            return f.errno
        } catch {
            Issue.record("\(error)")
        }
        return nil
    }
}

/// A host talking to a 1.1 agent sends none of the 1.2 messages: each operation says why.
@Suite struct OlderAgentTests {
    @Test func version12OperationsAreRefusedLocallyAgainstA11Agent() async throws {
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        // The 1.1 agent's answer waits in the socket before the client even says Hello.
        let ack = try Frame(stream: 0, .helloAck(HelloAck(version: Version(major: 1, minor: 1), software: "old agent",
                                                           capabilities: []))).encoded()
        _ = ack.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        let client = try AgentClient(socket: FileDescriptor(owning: fds[0]))
        #expect(client.version == Version(major: 1, minor: 1))
        for operation in ["Stat", "Spawn", "ListProcesses"] {
            do {
                switch operation {
                case "Stat": _ = try await client.stat("/")
                case "Spawn": _ = try await client.exec(Exec(argv: ["true"]), keep: true)
                default: _ = try await client.listProcesses()
                }
                Issue.record("\(operation) went to a 1.1 agent")
            } catch AgentClientError.unsupported(let name, let needs, let agent) {
                #expect(name == operation && needs == Version(major: 1, minor: 2) && agent == Version(major: 1, minor: 1))
            }
        }
        // Only the Hello went out.
        var decoder = FrameDecoder(from: .host)
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fds[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        decoder.feed(buffer[0..<max(n, 0)])
        guard case .hello? = try decoder.next()?.message else { Issue.record("no Hello"); return }
        #expect(try decoder.next() == nil)
    }
}
