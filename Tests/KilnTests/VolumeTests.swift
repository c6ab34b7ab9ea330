import AgentProtocol
import Glibc
import KilnTestSupport
import Sandbox
import Testing
import VMM

/// Volumes (docs/volumes.md) on sandboxes restored from the default template, as `kiln run -v`
/// gets them: the template's spare virtio-fs slots are bound at restore and the agent mounts them.
/// Guest work is kept to the agent's file transfers and one `mount` process per volume.
@Suite struct VolumeTests {
    static let owner: UInt32 = 4242

    struct Dirs {
        let base: String
        var rw: String { base + "/rw" }
        var ro: String { base + "/ro" }
        var outside: String { base + "/outside" }
        init(_ name: String) {
            base = "/tmp/kiln-volume-\(getpid())-\(name)"
            _ = Glibc.system("rm -rf '\(base)'")
            for d in [base, rw, ro, outside] { mkdir(d, 0o755) }
            // The jailed VMM runs as the read-write share's owner: the directory is theirs.
            chown(rw, VolumeTests.owner, VolumeTests.owner)
        }
        func remove() { _ = Glibc.system("rm -rf '\(base)'") }
    }

    static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n <= 0 { return out }
            out += buffer[0..<n]
        }
    }

    static func listing(_ dir: String) -> String {
        var out = ""
        guard let p = popen("cd '\(dir)' && find . -exec stat -c '%n %s %Y %a %u' {} + | sort", "r") else { return "" }
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, 4096, p) != nil { out += buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
        pclose(p)
        return out
    }

    static func pattern(_ count: Int, seed: UInt32) -> [UInt8] {
        var x = seed | 1
        return (0..<count).map { _ in x ^= x << 13; x ^= x >> 17; x ^= x << 5; return UInt8(truncatingIfNeeded: x) }
    }

    static func template() async throws -> String {
        try await TemplateTests.defaultTemplate()
    }

    @Test func filesCrossBothWaysReadOnlyRefusesAndNothingOutsideIsTouched() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let dirs = Dirs("both")
        defer { dirs.remove() }
        let hostBytes = Self.pattern(300_000, seed: 7)
        Self.write(dirs.ro + "/from-host.bin", hostBytes)
        Self.write(dirs.outside + "/secret", Array("host only".utf8))
        // Escapes the guest might try through the shares: links to outside, a relative one.
        symlink(dirs.outside, dirs.rw + "/up")
        symlink("../outside/secret", dirs.rw + "/rel")
        let roBefore = Self.listing(dirs.ro), outsideBefore = Self.listing(dirs.outside)

        let snapshot = try await Self.template()
        let sandbox = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: "/tmp/kiln-volume-tests-\(getpid())", volumes: [
            Volume(host: dirs.rw, guest: "/out", uid: Self.owner, gid: Self.owner),
            Volume(host: dirs.ro, guest: "/src", readOnly: true),
        ])
        defer { sandbox.stop() }

        // Host to guest, byte for byte, through the read-only share.
        #expect(try await sandbox.agent.readFile("/src/from-host.bin").contents == hostBytes)
        // Guest to host through the read-write one, owned by the chosen user.
        let guestBytes = Self.pattern(200_000, seed: 11)
        _ = try await sandbox.agent.writeFile("/out/from-guest.bin", contents: guestBytes, mode: 0o640)
        #expect(Self.read(dirs.rw + "/from-guest.bin") == guestBytes)
        var st = stat()
        #expect(stat(dirs.rw + "/from-guest.bin", &st) == 0)
        #expect(st.st_uid == Self.owner && st.st_gid == Self.owner)
        #expect(st.st_mode & 0o7777 == 0o640)
        // A directory the guest makes is the owner's too, and what the host then writes the guest reads.
        #expect(try await sandbox.agent.makeDirectory("/out/made"))
        #expect(stat(dirs.rw + "/made", &st) == 0 && st.st_uid == Self.owner)
        Self.write(dirs.rw + "/made/later.txt", Array("written on the host later\n".utf8))
        #expect(try await sandbox.agent.readFile("/out/made/later.txt").contents == Array("written on the host later\n".utf8))

        // The read-only share refuses writes, and the host directory is unchanged.
        await #expect(throws: AgentClientError.self) { _ = try await sandbox.agent.writeFile("/src/new", contents: [1]) }
        await #expect(throws: AgentClientError.self) { _ = try await sandbox.agent.writeFile("/src/from-host.bin", contents: [1]) }
        await #expect(throws: AgentClientError.self) { try await sandbox.agent.remove("/src/from-host.bin") }
        let refused = try await sandbox.agent.exec(Exec(argv: ["sh", "-c", "echo x > /src/new"], environment: ["PATH=/bin:/usr/bin"]))
        refused.closeStdin()
        let r = try await refused.collect()
        #expect(r.status != ExitStatus(.exited(code: 0)))
        #expect(String(decoding: r.stderr, as: UTF8.self).contains("Read-only file system"))
        #expect(Self.listing(dirs.ro) == roBefore)

        // Symlinks in the share are resolved by the guest, inside the guest: writing through them
        // never reaches the host's directory outside the share.
        _ = try? await sandbox.agent.writeFile("/out/up/planted", contents: [1])
        _ = try? await sandbox.agent.writeFile("/out/rel", contents: [2])
        _ = try? await sandbox.agent.writeFile("/out/../planted", contents: [3])
        #expect(Self.listing(dirs.outside) == outsideBefore)
        #expect(Self.read(dirs.outside + "/secret") == Array("host only".utf8))

        // A sandbox with a bound share cannot be snapshotted.
        #expect(throws: SandboxError.self) { try sandbox.snapshot(to: dirs.base + "/snap") }
    }

    @Test func twoSandboxesShareOneReadOnlyDirectoryAtOnce() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let dirs = Dirs("two")
        defer { dirs.remove() }
        let bytes = Self.pattern(50_000, seed: 3)
        Self.write(dirs.ro + "/shared.bin", bytes)
        let snapshot = try await Self.template()
        let runtime = "/tmp/kiln-volume-tests-\(getpid())"
        let volume = [Volume(host: dirs.ro, guest: "/data", readOnly: true)]
        async let first = Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, volumes: volume)
        async let second = Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, volumes: volume)
        let (a, b) = try await (first, second)
        defer { a.stop(); b.stop() }
        async let readA = a.agent.readFile("/data/shared.bin")
        async let readB = b.agent.readFile("/data/shared.bin")
        let (ra, rb) = try await (readA, readB)
        #expect(ra.contents == bytes && rb.contents == bytes)
    }
}
