import Glibc
import VMM
import KilnTestSupport
import LinuxSys
import Testing

/// Snapshots end to end with the default guest: one boot with a control socket, a snapshot taken
/// after the shell made some state, two clones restored from it at the same time, and damaged
/// snapshots refused.
@Suite(.blocking) struct SnapshotTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    @Test func clonesContinueFromTheSnapshotAndDivergeIndependently() throws {
        let dir = "/tmp/kiln-snapshot-test-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        let control = "\(dir)/control.sock", snap = "\(dir)/snap"

        // State before the snapshot: a file in tmpfs, a process that keeps running, and a write to
        // an overlay disk (it lives in Kiln's private write layer; the image stays all zeros).
        let image = "\(dir)/disk.img"
        #expect(system("truncate -s 1M \(image)") == 0)
        // As root the VMM is jailed: its supervisor serves the control socket and makes the snapshot's files.
        let original = try KilnProcess(["boot", "--memory", "128", "--control", control, "--disk", "\(image),overlay"])
        try original.waitForLine("KILN-INIT-READY", seconds: 600)
        original.send("echo 41 > /tmp/state; sleep 1000 & echo disk-41 > /dev/vda; sync; echo STATE-\"\"MADE\n")
        try original.waitForLine("STATE-MADE", seconds: 120)
        #expect(try Self.command(control, "pause") == "ok")
        #expect(try Self.command(control, "status") == "ok paused")
        let reply = try Self.command(control, "snapshot \(snap)")
        #expect(reply.hasPrefix("ok memory=134217728 "), "\(reply)")
        #expect(try Self.command(control, "resume") == "ok")
        #expect(try Self.command(control, "frobnicate").hasPrefix("error: unknown command"))
        #expect(access("\(snap)/state.tmp", F_OK) != 0 && access("\(snap)/state", F_OK) == 0, "the state file is renamed into place")
        original.send("echo ORIGINAL-\"\"ALIVE\n")
        try original.waitForLine("ORIGINAL-ALIVE", seconds: 120)
        original.send("reboot -f\n")
        #expect(try original.wait(seconds: 120) == 0)

        // Two clones at once from the same snapshot: both see the old state.
        let a = try KilnProcess(["restore", snap])
        let b = try KilnProcess(["restore", snap])
        for (clone, name) in [(a, "A"), (b, "B")] {
            clone.send("cat /tmp/state; ps; echo 3 > /proc/sys/vm/drop_caches; \(Self.readDisk); echo SEEN-\"\"\(name)\n")
            try clone.waitForLine("SEEN-\(name)", seconds: 120)
            #expect(clone.outputLines.contains("41"), "\(name): \(clone.output)")
            #expect(clone.outputLines.contains { $0.hasSuffix(" sleep 1000") }, "\(name): \(clone.output)")
            #expect(clone.outputLines.contains("disk-41"), "\(name): \(clone.output)") // read from the restored layer
        }

        // A write in one clone stays in that clone.
        a.send("echo written-by-a > /tmp/state; echo disk-AA > /dev/vda; sync; cat /tmp/state; echo WROTE-\"\"A\n")
        try a.waitForLine("WROTE-A", seconds: 120)
        #expect(a.outputLines.contains("written-by-a"))
        b.send("cat /tmp/state; echo 3 > /proc/sys/vm/drop_caches; \(Self.readDisk); echo READ-\"\"B\n")
        try b.waitForLine("READ-B", seconds: 120)
        #expect(!b.output.contains("written-by-a"))
        #expect(b.outputLines.filter { $0 == "41" }.count == 2, "\(b.output)") // before and after A's write
        #expect(b.outputLines.filter { $0 == "disk-41" }.count == 2 && !b.output.contains("disk-AA"), "\(b.output)")
        for clone in [a, b] {
            clone.send("reboot -f\n")
            #expect(try clone.wait(seconds: 120) == 0)
        }

        #expect(try readFile(image) == [UInt8](repeating: 0, count: 1 << 20)) // the image was never written

        // Damaged snapshots are refused with one line, before the guest runs.
        #expect(system("cp -r \(snap) \(dir)/corrupt && printf 'Z' | dd of=\(dir)/corrupt/state bs=1 seek=100 conv=notrunc 2>/dev/null") == 0)
        try Self.expectRefused("\(dir)/corrupt", "kiln: snapshot \(dir)/corrupt: state file is corrupted (checksum mismatch)")
        #expect(system("cp -r \(snap) \(dir)/short && truncate -s 1000 \(dir)/short/state") == 0)
        try Self.expectRefused("\(dir)/short", "kiln: snapshot \(dir)/short: state file is truncated (1000 of ")
        #expect(system("cp -r \(snap) \(dir)/nomem && truncate -s 4096 \(dir)/nomem/memory") == 0)
        try Self.expectRefused("\(dir)/nomem", "kiln: snapshot \(dir)/nomem: memory file is 4096 bytes, the state says 134217728")
        // A snapshot of the previous format version (its vsock connections were not saved).
        #expect(system("cp -r \(snap) \(dir)/v1 && printf '\\001' | dd of=\(dir)/v1/state bs=1 seek=8 conv=notrunc 2>/dev/null") == 0)
        try Self.expectRefused("\(dir)/v1", "kiln: snapshot \(dir)/v1: snapshot format version 1 is not supported by this Kiln (\(kilnVersion) reads version 2); make the snapshot again")
    }

    /// Reads the first 8 bytes of the disk (after drop_caches, so from the device).
    static let readDisk = "dd if=/dev/vda bs=8 count=1 2>/dev/null"

    func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: 2 << 20)
        let n = read(fd, &out, out.count)
        return Array(out[0..<max(0, n)])
    }

    static func expectRefused(_ dir: String, _ message: String) throws {
        let kiln = try KilnProcess(["restore", dir])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 1)
        let lines = kiln.errorOutput.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix(message), "\(kiln.errorOutput)")
        #expect(kiln.output.isEmpty)
    }

    /// Sends one line on the control socket and returns the reply line.
    static func command(_ path: String, _ line: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(rc == 0, "cannot connect to \(path): errno \(errno)")
        let request = Array((line + "\n").utf8)
        #expect(write(fd, request, request.count) == request.count)
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 && byte != UInt8(ascii: "\n") { reply.append(byte) }
        return String(decoding: reply, as: UTF8.self)
    }
}

/// vsock across a restore: the guest's listening socket survives, and the clone is reached through
/// its own Unix socket and CID (the guest re-reads the CID after the transport reset Kiln sends).
@Suite(.blocking) struct SnapshotVsockTests {
    static let megabyte = 1 << 20

    @Test func guestListenerIsReachableThroughTheClonesOwnSocket() throws {
        let dir = "/tmp/kiln-snapshot-vsock-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        let initrd = "\(dir)/initramfs.cpio", control = "\(dir)/control.sock", snap = "\(dir)/snap"
        let build = try runProgram(["\(VsockBootTests.sourceDir)/rootfs/build-vsock-test-initramfs.sh",
                                    "/var/cache/kiln/initramfs/initramfs.cpio", initrd])
        try #require(build.status == 0, "building the test initramfs failed")

        let original = try KilnProcess(["boot", "--no-jail", "--initrd", initrd, "--vsock", "\(dir)/original.sock", "--control", control])
        try original.waitForLine("KILN-INIT-READY", seconds: 600)
        original.send("vsock-test serve 5000 &\n")
        try original.waitFor("VSOCK-LISTENING", seconds: 120) { $0.output.contains("VSOCK-LISTENING 5000") }
        let reply = try SnapshotTests.command(control, "snapshot \(snap)")
        try #require(reply.hasPrefix("ok "), "\(reply)")
        original.send("reboot -f\n")
        #expect(try original.wait(seconds: 120) == 0)

        let clonePath = "\(dir)/clone.sock"
        let clone = try KilnProcess(["restore", snap, "--vsock", clonePath, "--vsock-cid", "5"])
        for _ in 0..<300 where access(clonePath, F_OK) != 0 { usleep(100_000) }
        let tools = VsockBootTests()
        let client = try tools.blocking(UnixSocket.connect(path: clonePath))
        try tools.sendAll(client.raw, Array("CONNECT 5000\n".utf8))
        let ok = try tools.readLine(client.raw)
        #expect(ok.hasPrefix("OK "), "\(ok)")
        let toGuest = tools.pattern(seed: 7)
        try tools.sendAll(client.raw, toGuest)
        let fromGuest = try tools.readAll(client.raw)
        try clone.waitFor("the guest's report", seconds: 120) { $0.output.contains("VSOCK-DONE") }
        #expect(fromGuest.count == Self.megabyte)
        #expect(clone.outputLines.contains("VSOCK-RECV \(sha256Hex(toGuest)) \(Self.megabyte)"), "\(clone.output)")
        clone.send("reboot -f\n")
        #expect(try clone.wait(seconds: 120) == 0)
    }
}
