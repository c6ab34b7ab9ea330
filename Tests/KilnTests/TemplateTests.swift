import AgentProtocol
import Glibc
import KilnTestSupport
import Sandbox
import Testing
import VMM

/// Templates as `kiln run` uses them: clones restored from one snapshot at the same time must
/// not share randomness, must see the host's time, and must not see each other's writes.
@Suite struct TemplateTests {
    static let kernel = "/var/cache/kiln/kernel/vmlinux"
    static let image = "/var/cache/kiln/images/default.ext4"

    func run(_ sandbox: Sandbox, _ argv: [String]) async throws -> String {
        let p = try await sandbox.agent.exec(Exec(argv: argv, environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let r = try await p.collect()
        #expect(r.status == AgentProtocol.ExitStatus(.exited(code: 0)), "\(argv): \(String(decoding: r.stderr, as: UTF8.self))")
        return String(decoding: r.stdout, as: UTF8.self)
    }

    @Test func clonesOfOneTemplateGetTheirOwnRandomnessClockAndDisk() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let config = Sandbox.Configuration(kernelPath: Self.kernel, imagePath: Self.image)
        let name = Templates.autoName(for: config)
        if !Templates.usable(name) {
            // Scripts/test.sh makes it before the tests; a bare `swift test` pays one boot here.
            try await Templates.create(name, config: config).stop()
        }
        let runtime = "/tmp/kiln-template-tests-\(getpid())"
        async let first = Sandbox.restore(snapshot: Templates.path(name), runtimeDirectory: runtime)
        async let second = Sandbox.restore(snapshot: Templates.path(name), runtimeDirectory: runtime)
        let (a, b) = try await (first, second)
        defer { a.stop(); b.stop() }

        // Reseeded after the restore: the two clones' random streams differ.
        let randomA = try await run(a, ["od", "-An", "-tx1", "-N16", "/dev/urandom"])
        let randomB = try await run(b, ["od", "-An", "-tx1", "-N16", "/dev/urandom"])
        #expect(randomA.count > 30 && randomB.count > 30)
        #expect(randomA != randomB, "two clones produced the same random bytes")

        // The guest clock was set from the host's, not left at the snapshot's moment.
        let guestTime = Int(try await run(a, ["date", "+%s"]).filter(\.isNumber)) ?? 0
        #expect(abs(guestTime - time(nil)) < 60, "guest clock \(guestTime), host \(time(nil))")

        // Each clone writes to its own layer and tmpfs.
        _ = try await a.agent.writeFile("/root/only-in-a", contents: Array("a\n".utf8))
        _ = try await run(a, ["sh", "-c", "echo a > /tmp/only-in-a"])
        await #expect(throws: AgentClientError.self) { _ = try await b.agent.readFile("/root/only-in-a") }
        await #expect(throws: AgentClientError.self) { _ = try await b.agent.readFile("/tmp/only-in-a") }
        #expect(try await a.agent.readFile("/root/only-in-a").contents == Array("a\n".utf8))
    }
}
