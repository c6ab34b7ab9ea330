import AgentProtocol
import Glibc
import KilnTestSupport
import Sandbox
import Testing
import VMM

/// Guests that attack their own host from inside (issue 14, "Hostile guest suite"); the cases
/// that fit CI time. A fork bomb is GuestLimitsTests, console spam ConsoleLogVMTests, a peer
/// that breaks the agent protocol HostileAgentPeerTests; the rest are in docs/security.md.
@Suite struct HostileGuestTests {
    /// The jailed VMM's resident memory in MiB.
    static func residentMiB(_ pid: pid_t) -> Int {
        let field = TestFiles.procStatus(pid)["VmRSS"] ?? ""
        return (Int(field.split(separator: " ").first ?? "") ?? 0) / 1024
    }

    /// A command that allocates more memory than the guest has: it fails in the guest, the agent
    /// answers the next command, the VMM's memory stays within the guest's RAM and its own 128
    /// MiB (the jail's cgroup limit), and a second sandbox answers throughout.
    @Test func aGuestThatExhaustsItsMemoryHurtsOnlyItsCommand() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let template = try await TemplateTests.defaultTemplate()
        let runtime = "/tmp/kiln-hostile-\(getpid())"
        async let first = Sandbox.restore(snapshot: template, runtimeDirectory: runtime)
        async let second = Sandbox.restore(snapshot: template, runtimeDirectory: runtime)
        let (hostile, other) = try await (first, second)
        defer { hostile.stop(); other.stop() }
        let vmm = try #require(hostile.vmmProcess?.pid, "the test runs as root: the VMM is jailed")
        let memoryMiB = Int(try SnapshotInfo.read(directory: template).memoryBytes >> 20)

        // tail -c N keeps the last N bytes: 400 MB of a 256 MiB guest.
        let p = try await hostile.agent.exec(Exec(argv: ["tail", "-c", "400000000", "/dev/zero"], environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let r = try await p.collect()
        #expect(r.status != AgentProtocol.ExitStatus(.exited(code: 0)), "the guest found 400 MB")
        #expect(r.stdout.isEmpty)
        #expect(Self.residentMiB(vmm) <= memoryMiB + 128, "VMM resident: \(Self.residentMiB(vmm)) MiB")

        let echo = try await TemplateTests().run(hostile, ["echo", "agent still answers"])
        #expect(echo == "agent still answers\n")
        let neighbour = try await TemplateTests().run(other, ["echo", "neighbour answers"])
        #expect(neighbour == "neighbour answers\n")
        #expect(hostile.ended == nil && other.ended == nil)
    }
}
