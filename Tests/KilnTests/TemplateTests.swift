import AgentProtocol
import Glibc
import KilnTestSupport
@testable import Sandbox
import Testing
import VMM

/// Templates as `kiln run` uses them: clones restored from one snapshot at the same time must
/// not share randomness, must see the host's time, and must not see each other's writes.
@Suite struct TemplateTests {
    static let kernel = "/var/cache/kiln/kernel/vmlinux"
    static let image = "/var/cache/kiln/images/default.ext4"

    /// The default image's template for the library's own configuration, made at most once per
    /// test process. Suites running in parallel each made it when it was missing, and each
    /// `Templates.create` replaces it by two renames: a restore that raced one could read one
    /// snapshot's state with another's memory (a vsock "available index jumped", then a triple
    /// fault). A bare `swift test` pays one boot here.
    static func defaultTemplate() async throws -> String { try await made.value }
    private static let made = Task<String, any Error> {
        let config = Sandbox.Configuration(kernelPath: kernel, imagePath: image)
        let name = Templates.autoName(for: config)
        if !Templates.usable(name) { try await Templates.create(name, config: config).stop() }
        return Templates.path(name)
    }

    /// How a saved template is put in place (no VM): where there is none, in one rename; over
    /// one that another `kiln run` of the same image saved meanwhile, that one stays and the new
    /// staging directory goes; over one that is to be replaced, the new one, with nothing left aside.
    @Test func aSavedTemplateGoesInWithOneRenameAndKeepsAUsableOneWhenAsked() throws {
        let cache = try TestImages.temporaryDirectory("kiln-install")
        defer { Files.removeFlatDirectory(cache + "/t") }
        func stage(_ content: String) -> String {
            let staging = cache + "/.t.tmp-\(getpid())"
            mkdir(staging, 0o700)
            #expect(Files.write(staging + "/state", Array(content.utf8)))
            return staging
        }
        let final = cache + "/t"
        var asked: [String] = []
        try Templates.install(stage("first"), as: final) { asked.append($0); return true }
        #expect(asked.isEmpty, "nothing to keep: no question asked")
        try Templates.install(stage("second"), as: final) { asked.append($0); return true }
        #expect(asked == [final])
        #expect(TestFiles.read(final + "/state") == "first")
        try Templates.install(stage("third"), as: final) { _ in false }
        #expect(TestFiles.read(final + "/state") == "third")
        #expect(TestFiles.list(cache) == ["t"], "no staging or old directory left")
    }

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
        _ = try await Self.defaultTemplate()
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

    /// A template made through a link to an image keeps the file the link named then. A rebuild
    /// relinks images/NAME.ext4 to a new file; restores of a named template made before used to
    /// open the new file under the old guest's ext4 state (the service's commands then failed:
    /// "'root' does not exist in the sandbox", /etc/passwd unreadable).
    @Test func aTemplateKeepsItsImageWhenItsLinkMovesToAnother() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let dir = try TestImages.temporaryDirectory("kiln-template-link")
        defer { _ = try? TestImages.run(["rm", "-rf", dir]) }
        // A copy of the image of its own, which the end of the test changes in place.
        let real = dir + "/copy.ext4"
        _ = try TestImages.run(["cp", "--sparse=always", Self.image, real])
        let link = dir + "/image.ext4", other = dir + "/other.ext4"
        #expect(symlink(real, link) == 0)
        let name = "test-link-\(getpid())"
        // A boot of its own, beside the other suites' at the start of a parallel run: on a 2-core
        // host with emulated guest kernels it missed the default 300 s once (the CI check of
        // 2026-12-04); the test is about the link, not the boot's speed.
        var config = Sandbox.Configuration(kernelPath: Self.kernel, imagePath: link)
        config.bootTimeout = 900
        try await Templates.create(name, config: config).stop()
        defer { _ = Templates.remove(name) }
        #expect(try SnapshotInfo.read(directory: Templates.path(name)).config.disks.first?.path == real)
        #expect(Templates.problem(name) == nil)

        // The link now names another ext4 (empty): the template's restores still read its own.
        _ = try TestImages.run(["mkfs.ext4", "-q", "-F", other, "16M"])
        #expect(unlink(link) == 0 && symlink(other, link) == 0)
        #expect(Templates.problem(name) == nil, "the link moved, the template's own file did not")
        do {
            let sandbox = try await Sandbox.restore(snapshot: Templates.path(name), runtimeDirectory: "/tmp/kiln-template-tests-\(getpid())")
            defer { sandbox.stop() }
            let passwd = String(decoding: try await sandbox.agent.readFile("/etc/passwd").contents, as: UTF8.self)
            #expect(passwd.hasPrefix("root:x:0:0:"), "\(passwd)")
            #expect(try await run(sandbox, ["cat", "/etc/hostname"]) == "kiln\n")
        }

        // The template's own file rewritten in place (same path, same size): its restores would
        // read other blocks under the saved ext4 state, so the template is no longer usable, and
        // says which file changed.
        _ = try TestImages.run(["dd", "if=/dev/zero", "of=" + real, "bs=4096", "seek=1", "count=1", "conv=notrunc", "status=none"])
        let problem = try #require(Templates.problem(name))
        #expect(problem.contains(real) && problem.contains("changed"), "\(problem)")
        #expect(!Templates.usable(name))
    }
}

/// The agent's connection survives the template's snapshot: a restored sandbox's client attaches
/// to the guest's kept connection and runs its first command without a new connection or a
/// handshake (had the guest seen a transport reset, that connection would be gone and the command
/// would fail); clones restored at the same time each get their own stream.
@Suite struct TemplateConnectionTests {
    @Test func restoredClonesRunTheirFirstCommandOnTheKeptConnection() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let config = Sandbox.Configuration(kernelPath: TemplateTests.kernel, imagePath: TemplateTests.image)
        let name = Templates.autoName(for: config)
        _ = try await TemplateTests.defaultTemplate()
        #expect(AgentSession.read(snapshot: Templates.path(name)) != nil, "the template records its agent session")
        let runtime = "/tmp/kiln-template-connection-\(getpid())"
        async let first = Sandbox.restore(snapshot: Templates.path(name), runtimeDirectory: runtime)
        async let second = Sandbox.restore(snapshot: Templates.path(name), runtimeDirectory: runtime)
        let (a, b) = try await (first, second)
        defer { a.stop(); b.stop() }
        #expect(a.agent.resumedSession && b.agent.resumedSession)

        async let outA = TemplateTests().run(a, ["echo", "output of clone a"])
        async let outB = TemplateTests().run(b, ["echo", "output of clone b"])
        let (textA, textB) = try await (outA, outB)
        #expect(textA == "output of clone a\n")
        #expect(textB == "output of clone b\n")
    }

    /// A template written in the previous snapshot format is not usable (so `kiln run` makes it
    /// again), and restoring it says why in one line.
    @Test func templateOfTheOldFormatIsRefusedWithOneLine() async throws {
        let config = Sandbox.Configuration(kernelPath: TemplateTests.kernel, imagePath: TemplateTests.image)
        let name = Templates.autoName(for: config)
        _ = try await TemplateTests.defaultTemplate()
        let oldName = "test-old-format-\(getpid())", old = Templates.path(oldName)
        defer { _ = system("rm -rf \(old)") }
        #expect(system("mkdir -p \(old) && cp \(Templates.path(name))/state \(old)/state") == 0)
        // Read once while good (the answer is kept), then changed in place: the change is seen.
        #expect(try SnapshotInfo.read(directory: old).memoryBytes > 0)
        #expect(system("printf '\\001' | dd of=\(old)/state bs=1 seek=8 conv=notrunc 2>/dev/null") == 0)
        #expect(throws: MachineError.self) { try SnapshotInfo.read(directory: old) }
        #expect(!Templates.usable(oldName), "kiln run makes a template that is not usable again")
        do {
            _ = try await Sandbox.restore(snapshot: old, runtimeDirectory: "/tmp/kiln-old-format-run-\(getpid())")
            Issue.record("a version 1 snapshot was restored")
        } catch {
            #expect("\(error)" == "snapshot \(old): snapshot format version 1 is not supported by this Kiln (\(kilnVersion) reads version 2); make the snapshot again")
        }
    }
}
