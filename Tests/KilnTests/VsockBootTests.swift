import Glibc
import KilnTestSupport
import LinuxSys
import Testing

/// `kiln boot --vsock` with Kiln's own kernel and an initramfs that adds /bin/vsock-test
/// (rootfs/vsock-test.c): one boot, 1 MiB each way on a host-initiated and a guest-initiated stream.
@Suite(.blocking) struct VsockBootTests {
    static let megabyte = 1 << 20
    static var sourceDir: String {
        var path = #filePath // <root>/Tests/KilnTests/VsockBootTests.swift
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
        return path
    }

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    @Test func oneMebibyteEachWayHostAndGuestInitiated() throws {
        let dir = "/tmp/kiln-vsock-boot-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = try? runProgram(["/bin/rm", "-rf", dir]) }
        let initrd = "\(dir)/initramfs.cpio", socketPath = "\(dir)/v.sock"
        let build = try runProgram(["\(Self.sourceDir)/rootfs/build-vsock-test-initramfs.sh",
                                    "/var/cache/kiln/initramfs/initramfs.cpio", initrd])
        try #require(build.status == 0, "building the test initramfs failed")

        let kiln = try KilnProcess(["boot", "--initrd", initrd, "--vsock", socketPath])
        try kiln.waitForLine("KILN-INIT-READY", seconds: 600)
        #expect(access(socketPath, F_OK) == 0)

        // Nobody listens on guest port 9: the guest answers RST and Kiln closes the client.
        let refused = try blocking(UnixSocket.connect(path: socketPath))
        try sendAll(refused.raw, Array("CONNECT 9\n".utf8))
        #expect(try readAll(refused.raw).isEmpty)

        // Host-initiated: CONNECT, OK, 1 MiB to the guest, 1 MiB back.
        kiln.send("vsock-test serve 5000\n")
        try kiln.waitForLine("VSOCK-LISTENING 5000", seconds: 120)
        let client = try blocking(UnixSocket.connect(path: socketPath))
        try sendAll(client.raw, Array("CONNECT 5000\n".utf8))
        let ok = try readLine(client.raw)
        #expect(ok.hasPrefix("OK ") && UInt32(ok.dropFirst(3)).map { $0 >= 1024 } == true, "\(ok)")
        let toGuest = pattern(seed: 1)
        try sendAll(client.raw, toGuest)
        let fromGuest = try readAll(client.raw)
        try kiln.waitFor("the guest's report", seconds: 120) { $0.output.contains("VSOCK-DONE") }
        #expect(fromGuest.count == Self.megabyte)
        #expect(report(kiln, "VSOCK-RECV") == "\(sha256Hex(toGuest)) \(Self.megabyte)")
        #expect(report(kiln, "VSOCK-SENT") == "\(sha256Hex(fromGuest)) \(fromGuest.count)")

        // Guest-initiated: the guest connects to CID 2 port 6000, which Kiln relays to PATH_6000.
        let listener = try UnixSocket.listen(path: "\(socketPath)_6000")
        kiln.send("vsock-test connect 6000\n")
        var ready = pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0)
        try #require(poll(&ready, 1, 120_000) == 1, "the guest's connection never reached PATH_6000")
        guard let accepted = try UnixSocket.accept(listener.raw) else { Issue.record("accept found nothing"); return }
        let server = try blocking(accepted)
        let fromGuest2 = try readAll(server.raw, limit: Self.megabyte)
        let toGuest2 = pattern(seed: 2)
        try sendAll(server.raw, toGuest2)
        Glibc.shutdown(server.raw, Int32(SHUT_RDWR))
        try kiln.waitFor("the guest's second report", seconds: 120) {
            $0.outputLines.filter { $0 == "VSOCK-DONE" }.count == 2
        }
        #expect(fromGuest2.count == Self.megabyte)
        #expect(report(kiln, "VSOCK-SENT") == "\(sha256Hex(fromGuest2)) \(Self.megabyte)")
        #expect(report(kiln, "VSOCK-RECV") == "\(sha256Hex(toGuest2)) \(Self.megabyte)")

        kiln.send("reboot -f\n")
        #expect(try kiln.wait(seconds: 120) == 0, "stderr: \(kiln.errorOutput)")
        #expect(access(socketPath, F_OK) != 0, "Kiln removes its socket when the VM ends")
    }

    /// The last line the guest printed starting with `tag`, without the tag.
    func report(_ kiln: KilnProcess, _ tag: String) -> String? {
        kiln.outputLines.last { $0.hasPrefix(tag + " ") }.map { String($0.dropFirst(tag.count + 1)) }
    }

    /// 1 MiB of bytes that differ per seed (xorshift), so a misplaced chunk changes the hash.
    func pattern(seed: UInt32) -> [UInt8] {
        var x = seed &* 0x9E37_79B9 | 1
        return (0..<Self.megabyte).map { _ in
            x ^= x << 13; x ^= x >> 17; x ^= x << 5
            return UInt8(truncatingIfNeeded: x)
        }
    }

    /// The socket in blocking mode, with a 120 s receive/send timeout so a stuck guest fails the test.
    func blocking(_ fd: consuming FileDescriptor) throws -> FileDescriptor {
        _ = fcntl(fd.raw, F_SETFL, fcntl(fd.raw, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: 120, tv_usec: 0)
        setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd.raw, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { b in
            var offset = 0
            while offset < b.count {
                let n = Glibc.send(fd, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw Errno.current("send") }
                offset += n
            }
        }
    }

    /// Reads until end of stream (or `limit` bytes).
    func readAll(_ fd: Int32, limit: Int = .max) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while out.count < limit {
            let n = Glibc.read(fd, &buffer, min(buffer.count, limit - out.count))
            guard n >= 0 else { throw Errno.current("read") }
            if n == 0 { break }
            out += buffer[0..<n]
        }
        return out
    }

    /// Reads one byte at a time up to a newline, so no payload is consumed.
    func readLine(_ fd: Int32) throws -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 64 {
            let n = Glibc.read(fd, &byte, 1)
            guard n == 1 else { throw Errno.current("read") }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }
}
