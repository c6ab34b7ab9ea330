import AgentProtocol
import Glibc
import KilnTestSupport
import Sandbox
import Testing

/// Protocol 1.4's open-files limit (docs/agent-protocol.md, "Limits"), against the real
/// kiln-agent on the host: the command starts with the RLIMIT_NOFILE it was given, soft and hard.
@Suite struct OpenFilesLimitTests {
    let agent: HostAgent
    let env = ["PATH=/usr/bin:/bin"]

    init() throws {
        agent = try HostAgent()
    }

    func limits(_ client: AgentClient, _ limits: Limits?) async throws -> String {
        let exec = Exec(argv: ["sh", "-c", "ulimit -Sn; ulimit -Hn"], environment: env)
        let p = try await client.exec(exec, keep: false, limits: limits)
        p.closeStdin()
        let r = try await p.collect()
        #expect(r.status == ExitStatus(.exited(code: 0)), "\(String(decoding: r.stderr, as: UTF8.self))")
        return String(decoding: r.stdout, as: UTF8.self)
    }

    @Test func aCommandGetsTheOpenFilesLimitItAskedFor() async throws {
        let client = try agent.connect()
        defer { client.close() }
        #expect(client.version == Wire.version)
        // Fewer than the agent itself holds: the child's descriptors are set up before the limit.
        #expect(try await limits(client, Limits(openFiles: 8)) == "8\n8\n")
        // With pids too, in the same record.
        #expect(try await limits(client, Limits(pids: 50, openFiles: 64)) == "64\n64\n")
    }

    @Test func withoutOneTheCommandKeepsTheAgentsOwnOutsideAGuest() async throws {
        var own = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &own)
        let client = try agent.connect()
        defer { client.close() }
        let text = try await limits(client, Limits(pids: 50))
        let expected = [own.rlim_cur, own.rlim_max].map { $0 == rlim_t.max ? "unlimited" : String($0) }
        #expect(text == expected.joined(separator: "\n") + "\n")
    }
}
