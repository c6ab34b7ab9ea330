import Glibc
import LinuxSys
import Testing
@testable import Devices

/// A FUSE client for tests: builds requests as Linux's fuse driver does and reads the replies.
final class FUSEClient {
    let server: FUSEServer
    var unique: UInt64 = 1
    init(_ server: FUSEServer) { self.server = server }

    static func request(_ opcode: UInt32, node: UInt64, unique: UInt64, _ args: [UInt8]) -> [UInt8] {
        var w = FUSEWriter()
        w.u32(UInt32(40 + args.count)); w.u32(opcode); w.u64(unique); w.u64(node)
        w.u32(0); w.u32(0); w.u32(0); w.u32(0)
        return w.bytes + args
    }

    /// Sends one request; returns (errno, body).
    func send(_ opcode: UInt32, node: UInt64 = FUSEServer.rootNode, _ args: [UInt8] = []) -> (error: Int32, body: [UInt8]) {
        unique += 1
        guard let reply = server.handle(FUSEClient.request(opcode, node: node, unique: unique, args)) else { return (0, []) }
        let r = FUSEBytes(reply)
        precondition(Int(r.u32(0)) == reply.count && r.u64(8) == unique, "reply framing")
        return (-Int32(bitPattern: r.u32(4)), Array(reply[16...]))
    }

    static func name(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }
    static func u32s(_ v: [UInt32]) -> [UInt8] { var w = FUSEWriter(); v.forEach { w.u32($0) }; return w.bytes }
    static func u64s(_ v: [UInt64]) -> [UInt8] { var w = FUSEWriter(); v.forEach { w.u64($0) }; return w.bytes }

    func initialize() -> Int32 { send(FUSEOpcode.initialize, FUSEClient.u32s([7, 38, 65536, 0xFFFF_FFFF])).error }

    /// LOOKUP: (errno, node, mode, uid, gid, size).
    func lookup(_ name: String, in parent: UInt64 = FUSEServer.rootNode) -> (error: Int32, node: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64) {
        let (e, b) = send(FUSEOpcode.lookup, node: parent, FUSEClient.name(name))
        guard e == 0 else { return (e, 0, 0, 0, 0, 0) }
        return FUSEClient.entry(b)
    }

    static func entry(_ b: [UInt8]) -> (error: Int32, node: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, size: UInt64) {
        let r = FUSEBytes(b)
        return (0, r.u64(0), r.u32(40 + 60), r.u32(40 + 68), r.u32(40 + 72), r.u64(40 + 8))
    }

    func open(_ node: UInt64, flags: Int32 = O_RDONLY) -> (error: Int32, handle: UInt64) {
        let (e, b) = send(FUSEOpcode.open, node: node, FUSEClient.u32s([UInt32(bitPattern: flags), 0]))
        return (e, e == 0 ? FUSEBytes(b).u64(0) : 0)
    }

    func read(_ node: UInt64, handle: UInt64, offset: UInt64 = 0, size: UInt32 = 1 << 20) -> (error: Int32, data: [UInt8]) {
        let args = FUSEClient.u64s([handle, offset]) + FUSEClient.u32s([size, 0]) + FUSEClient.u64s([0]) + FUSEClient.u32s([0, 0])
        let r = send(FUSEOpcode.read, node: node, args)
        return (r.error, r.body)
    }

    func write(_ node: UInt64, handle: UInt64, _ data: [UInt8], offset: UInt64 = 0) -> Int32 {
        let args = FUSEClient.u64s([handle, offset]) + FUSEClient.u32s([UInt32(data.count), 0]) + FUSEClient.u64s([0]) + FUSEClient.u32s([0, 0])
        return send(FUSEOpcode.write, node: node, args + data).error
    }

    func create(_ name: String, in parent: UInt64 = FUSEServer.rootNode, mode: UInt32 = 0o644) -> (error: Int32, node: UInt64, handle: UInt64, uid: UInt32, gid: UInt32, mode: UInt32) {
        let (e, b) = send(FUSEOpcode.create, node: parent,
                          FUSEClient.u32s([UInt32(O_WRONLY | O_CREAT), mode, 0o022, 0]) + FUSEClient.name(name))
        guard e == 0 else { return (e, 0, 0, 0, 0, 0) }
        let entry = FUSEClient.entry(b)
        return (0, entry.node, FUSEBytes(b).u64(128), entry.uid, entry.gid, entry.mode)
    }

    func mkdir(_ name: String, in parent: UInt64 = FUSEServer.rootNode, mode: UInt32 = 0o755) -> Int32 {
        send(FUSEOpcode.mkdir, node: parent, FUSEClient.u32s([mode, 0o022]) + FUSEClient.name(name)).error
    }
}

/// A fresh directory under /tmp, with a file and a directory outside it (for escape attempts).
struct Share {
    let base: String
    var root: String { base + "/share" }
    var outside: String { base + "/outside" }

    init(_ name: String) {
        base = "/tmp/kiln-fuse-\(getpid())-\(name)"
        _ = Glibc.system("rm -rf '\(base)'")
        mkdir(base, 0o755); mkdir(root, 0o755); mkdir(outside, 0o755)
        Share.write(outside + "/secret", Array("outside".utf8))
        Share.write(root + "/hello.txt", Array("hello from the host\n".utf8))
    }

    static func write(_ path: String, _ bytes: [UInt8]) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n <= 0 { return out }
            out += buffer[0..<n]
        }
    }

    func listing(_ path: String) -> String {
        var out = ""
        let p = popen("cd '\(path)' && find . | sort && cat $(find . -type f | sort) 2>/dev/null", "r")
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, 4096, p) != nil { out += buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }
        pclose(p)
        return out
    }

    func remove() { _ = Glibc.system("rm -rf '\(base)'") }
}

@Suite struct FUSEDecoderTests {
    @Test func malformedRequestsAreRefusedNotTrusted() {
        let lookup = FUSEClient.request(FUSEOpcode.lookup, node: 1, unique: 9, FUSEClient.name("a"))
        #expect(throws: FUSEDecodeError.short(needed: 40, have: 39)) { _ = try FUSERequest.decode(Array(lookup[0..<39])) }
        // The header claims more bytes than the guest supplied.
        #expect(throws: FUSEDecodeError.length(header: 42, have: 41)) { _ = try FUSERequest.decode(Array(lookup[0..<41])) }
        for bad in ["..", ".", "a/b", ""] {
            let r = FUSEClient.request(FUSEOpcode.lookup, node: 1, unique: 9, FUSEClient.name(bad))
            #expect(throws: FUSEDecodeError.badName, "\(bad)") { _ = try FUSERequest.decode(r) }
        }
        let unterminated = FUSEClient.request(FUSEOpcode.mkdir, node: 1, unique: 9, FUSEClient.u32s([0o755, 0]) + Array("x".utf8))
        #expect(throws: FUSEDecodeError.badName) { _ = try FUSERequest.decode(unterminated) }
        let long = FUSEClient.request(FUSEOpcode.unlink, node: 1, unique: 9, FUSEClient.name(String(repeating: "n", count: 256)))
        #expect(throws: FUSEDecodeError.badName) { _ = try FUSERequest.decode(long) }
        let batch = FUSEClient.request(FUSEOpcode.batchForget, node: 0, unique: 9, FUSEClient.u32s([3, 0]) + FUSEClient.u64s([5, 1]))
        #expect(throws: FUSEDecodeError.badCount(3)) { _ = try FUSERequest.decode(batch) }
        // A WRITE whose size runs past its data.
        let write = FUSEClient.request(FUSEOpcode.write, node: 2, unique: 9,
                                       FUSEClient.u64s([1, 0]) + FUSEClient.u32s([100, 0]) + FUSEClient.u64s([0]) + FUSEClient.u32s([0, 0]) + [1, 2, 3])
        #expect(throws: FUSEDecodeError.self) { _ = try FUSERequest.decode(write) }
    }

    @Test func wellFormedRequestsDecode() throws {
        let rename = FUSEClient.request(FUSEOpcode.rename2, node: 4, unique: 7, FUSEClient.u64s([5]) + FUSEClient.u32s([1, 0])
                                        + FUSEClient.name("old") + FUSEClient.name("new"))
        let r = try FUSERequest.decode(rename)
        #expect(r.header.unique == 7 && r.header.nodeID == 4)
        #expect(r.operation == .rename(newParent: 5, from: Array("old".utf8), to: Array("new".utf8), flags: 1))
        let symlink = FUSEClient.request(FUSEOpcode.symlink, node: 1, unique: 8, FUSEClient.name("l") + FUSEClient.name("../../etc/passwd"))
        #expect(try FUSERequest.decode(symlink).operation == .symlink(name: Array("l".utf8), target: Array("../../etc/passwd".utf8)))
        let unknown = FUSEClient.request(21, node: 1, unique: 8, FUSEClient.name("user.x")) // SETXATTR
        #expect(try FUSERequest.decode(unknown).operation == .unsupported(opcode: 21))
    }

    @Test func everyTruncationOfEveryRequestIsAnErrorOrARequest() throws {
        let share = Share("trunc")
        defer { share.remove() }
        let server = try FUSEServer(path: share.root, options: ShareOptions(readOnly: true, uid: 0, gid: 0))
        let samples = [
            FUSEClient.request(FUSEOpcode.initialize, node: 0, unique: 1, FUSEClient.u32s([7, 38, 0, 0])),
            FUSEClient.request(FUSEOpcode.setattr, node: 1, unique: 1, [UInt8](repeating: 0xFF, count: 88)),
            FUSEClient.request(FUSEOpcode.create, node: 1, unique: 1, FUSEClient.u32s([0, 0, 0, 0]) + FUSEClient.name("f")),
            FUSEClient.request(FUSEOpcode.readdir, node: 1, unique: 1, [UInt8](repeating: 0, count: 40)),
            FUSEClient.request(FUSEOpcode.batchForget, node: 0, unique: 1, FUSEClient.u32s([1, 0]) + FUSEClient.u64s([1, 1])),
        ]
        for sample in samples {
            for n in 0...sample.count {
                var bytes = Array(sample[0..<n])
                if n >= 4 { bytes[0] = UInt8(n & 0xFF); bytes[1] = UInt8(n >> 8) } // the header agrees with what is there
                _ = try? FUSERequest.decode(bytes)
                _ = server.handle(bytes)
            }
        }
    }
}

@Suite struct FUSEServerTests {
    @Test func aHostFileIsReadByteForByteAndGuestWritesReachTheHost() throws {
        let share = Share("rw")
        defer { share.remove() }
        var big = [UInt8](repeating: 0, count: 3 << 20)
        for i in big.indices { big[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        Share.write(share.root + "/big.bin", big)
        let client = FUSEClient(try FUSEServer(path: share.root, options: ShareOptions(uid: 0, gid: 0)))
        #expect(client.initialize() == 0)
        let file = client.lookup("big.bin")
        #expect(file.error == 0 && file.size == UInt64(big.count))
        let h = client.open(file.node)
        var got: [UInt8] = []
        while true {
            let (e, data) = client.read(file.node, handle: h.handle, offset: UInt64(got.count))
            #expect(e == 0)
            if data.isEmpty { break }
            got += data
        }
        #expect(got == big)

        let created = client.create("out.txt")
        #expect(created.error == 0)
        #expect(client.write(created.node, handle: created.handle, Array("from the guest".utf8)) == 0)
        #expect(Share.read(share.root + "/out.txt") == Array("from the guest".utf8))
        #expect(client.mkdir("sub") == 0)
        #expect(client.lookup("sub").mode & S_IFMT == S_IFDIR)
    }

    @Test func aReadOnlyShareRefusesEveryWriteAtTheHost() throws {
        let share = Share("ro")
        defer { share.remove() }
        let before = share.listing(share.root)
        let client = FUSEClient(try FUSEServer(path: share.root, options: ShareOptions(readOnly: true, uid: 0, gid: 0)))
        #expect(client.initialize() == 0)
        let hello = client.lookup("hello.txt")
        #expect(client.create("new").error == EROFS)
        #expect(client.mkdir("dir") == EROFS)
        #expect(client.open(hello.node, flags: O_WRONLY).error == EROFS)
        #expect(client.open(hello.node, flags: O_RDONLY | O_TRUNC).error == EROFS)
        #expect(client.send(FUSEOpcode.unlink, FUSEClient.name("hello.txt")).error == EROFS)
        #expect(client.send(FUSEOpcode.symlink, FUSEClient.name("l") + FUSEClient.name("x")).error == EROFS)
        #expect(client.send(FUSEOpcode.rename, FUSEClient.u64s([1]) + FUSEClient.name("hello.txt") + FUSEClient.name("x")).error == EROFS)
        #expect(client.send(FUSEOpcode.setattr, node: hello.node, FUSEClient.u32s([FUSESetAttr.size, 0]) + [UInt8](repeating: 0, count: 80)).error == EROFS)
        // Even a read handle cannot be used to write.
        let h = client.open(hello.node)
        #expect(client.write(hello.node, handle: h.handle, [1]) == EROFS)
        #expect(share.listing(share.root) == before)
    }

    /// Fuzz/run-all.sh found it (FuzzFUSE, 2026-12-02): an ACCESS mask with bit 31 set trapped the
    /// VMM converting it to an Int32. Bits other than R_OK, W_OK and X_OK are EINVAL, as access(2).
    @Test func anAccessMaskOutsideRWXIsInvalidNotATrap() throws {
        let share = Share("access")
        defer { share.remove() }
        let client = FUSEClient(try FUSEServer(path: share.root, options: ShareOptions(readOnly: false, uid: 0, gid: 0)))
        #expect(client.initialize() == 0)
        let hello = client.lookup("hello.txt")
        #expect(client.send(FUSEOpcode.access, node: hello.node, FUSEClient.u32s([0x8000_0000, 0])).error == EINVAL)
        #expect(client.send(FUSEOpcode.access, node: hello.node, FUSEClient.u32s([8, 0])).error == EINVAL)
        #expect(client.send(FUSEOpcode.access, node: hello.node, FUSEClient.u32s([UInt32(R_OK), 0])).error == 0)
    }

    @Test func escapesFailAndNothingOutsideIsTouched() throws {
        let share = Share("escape")
        defer { share.remove() }
        symlink(share.outside, share.root + "/out-dir")
        symlink(share.outside + "/secret", share.root + "/out-file")
        symlink("../outside/secret", share.root + "/relative")
        mkfifo(share.root + "/fifo", 0o644)
        _ = mknod(share.root + "/null", S_IFCHR | 0o666, UInt(1 << 8 | 3) /* makedev(1, 3) */)
        let outsideBefore = share.listing(share.outside)
        let client = FUSEClient(try FUSEServer(path: share.root, options: ShareOptions(uid: 0, gid: 0)))
        #expect(client.initialize() == 0)
        #expect(client.lookup("..").error == EINVAL)
        #expect(client.send(FUSEOpcode.lookup, FUSEClient.name("out-dir/secret")).error == EINVAL)
        // A symlink is the link itself: never followed on the host, never opened, never a parent.
        let dirLink = client.lookup("out-dir")
        #expect(dirLink.error == 0 && dirLink.mode & S_IFMT == S_IFLNK)
        #expect(client.lookup("secret", in: dirLink.node).error == ENOTDIR)
        #expect(client.create("planted", in: dirLink.node).error == ENOTDIR)
        #expect(client.mkdir("planted", in: dirLink.node) == ENOTDIR)
        for name in ["out-file", "relative"] {
            let link = client.lookup(name)
            #expect(link.mode & S_IFMT == S_IFLNK)
            #expect(client.open(link.node).error == EACCES)
            #expect(client.open(link.node, flags: O_WRONLY).error == EACCES)
        }
        // Creating over a symlink does not write through it.
        #expect(client.create("out-file").error != 0)
        // Device nodes and FIFOs are never opened (a FIFO would block the server).
        #expect(client.open(client.lookup("fifo").node).error == EACCES)
        let null = client.lookup("null")
        if null.error == 0 { #expect(client.open(null.node, flags: O_RDWR).error == EACCES) }
        // A hard link to a directory, a rename out through a link, a whiteout: refused.
        #expect(client.send(FUSEOpcode.link, FUSEClient.u64s([FUSEServer.rootNode]) + FUSEClient.name("rootlink")).error == EPERM)
        #expect(client.send(FUSEOpcode.rename, FUSEClient.u64s([dirLink.node]) + FUSEClient.name("hello.txt") + FUSEClient.name("x")).error == ENOTDIR)
        #expect(client.send(FUSEOpcode.rename2, FUSEClient.u64s([1]) + FUSEClient.u32s([4, 0]) + FUSEClient.name("hello.txt") + FUSEClient.name("y")).error == EINVAL)
        // The guest may make a symlink pointing anywhere: it stays text, resolved only in the guest.
        #expect(client.send(FUSEOpcode.symlink, FUSEClient.name("evil") + FUSEClient.name("/etc/shadow")).error == 0)
        #expect(client.open(client.lookup("evil").node).error == EACCES)
        // Unknown nodes and handles are errors, not crashes.
        #expect(client.send(FUSEOpcode.getattr, node: 999, [UInt8](repeating: 0, count: 16)).error == ESTALE)
        #expect(client.read(1, handle: 42).error == EBADF)
        #expect(share.listing(share.outside) == outsideBefore)
    }

    @Test func createdFilesHaveTheChosenOwnerAndNoSetuidBits() throws {
        let share = Share("owner")
        defer { share.remove() }
        let client = FUSEClient(try FUSEServer(path: share.root, options: ShareOptions(uid: 4321, gid: 4322)))
        #expect(client.initialize() == 0)
        let f = client.create("made", mode: 0o4755)
        #expect(f.error == 0)
        #expect(client.mkdir("dir", mode: 0o2775) == 0)
        #expect(client.send(FUSEOpcode.symlink, FUSEClient.name("link") + FUSEClient.name("made")).error == 0)
        var st = stat()
        for name in ["made", "dir", "link"] {
            #expect(lstat(share.root + "/" + name, &st) == 0)
            if geteuid() == 0 { #expect(st.st_uid == 4321 && st.st_gid == 4322, "\(name)") }
            #expect(st.st_mode & (S_ISUID | S_ISGID) == 0, "\(name)")
        }
        // chmod keeps permissions but never sets setuid or setgid; a chown is accepted and changes nothing.
        var chmod = FUSEWriter()
        chmod.u32(FUSESetAttr.mode); chmod.zeros(64); chmod.u32(0o6777); chmod.zeros(16)
        #expect(client.send(FUSEOpcode.setattr, node: f.node, chmod.bytes).error == 0)
        #expect(stat(share.root + "/made", &st) == 0 && st.st_mode & 0o7777 == 0o777)
        var chown = FUSEWriter()
        chown.u32(FUSESetAttr.uid); chown.zeros(72); chown.u32(0); chown.zeros(8)
        #expect(client.send(FUSEOpcode.setattr, node: f.node, chown.bytes).error == 0)
        #expect(stat(share.root + "/made", &st) == 0)
        if geteuid() == 0 { #expect(st.st_uid == 4321) }
    }

    @Test func mtimeAndPermissionsRoundTripAndForgetReleasesInodes() throws {
        let share = Share("attrs")
        defer { share.remove() }
        let server = try FUSEServer(path: share.root, options: ShareOptions(uid: 0, gid: 0))
        let client = FUSEClient(server)
        #expect(client.initialize() == 0)
        let hello = client.lookup("hello.txt")
        var times = FUSEWriter()
        times.u32(FUSESetAttr.mtime | FUSESetAttr.mode); times.zeros(36); times.u64(1_234_567_890); times.zeros(12)
        times.u32(123); times.zeros(4); times.u32(0o640); times.zeros(16)
        #expect(client.send(FUSEOpcode.setattr, node: hello.node, times.bytes).error == 0)
        var st = stat()
        #expect(stat(share.root + "/hello.txt", &st) == 0)
        #expect(st.st_mtim.tv_sec == 1_234_567_890 && st.st_mtim.tv_nsec == 123 && st.st_mode & 0o777 == 0o640)
        // Listing: READDIR names every entry once.
        let dir = client.send(FUSEOpcode.opendir, FUSEClient.u32s([0, 0]))
        let handle = FUSEBytes(dir.body).u64(0)
        let list = client.send(FUSEOpcode.readdir, FUSEClient.u64s([handle, 0]) + FUSEClient.u32s([4096, 0]) + FUSEClient.u64s([0]) + FUSEClient.u32s([0, 0]))
        var names: [String] = [], at = 0
        let r = FUSEBytes(list.body)
        while at + 24 <= list.body.count {
            let length = Int(r.u32(at + 16))
            names.append(String(decoding: list.body[(at + 24)..<(at + 24 + length)], as: UTF8.self))
            at += (24 + length + 7) & ~7
        }
        #expect(names.sorted() == [".", "..", "hello.txt"])
        #expect(server.counts.inodes == 2)
        _ = client.send(FUSEOpcode.forget, node: hello.node, FUSEClient.u64s([1]))
        #expect(server.counts.inodes == 1)
        _ = client.send(FUSEOpcode.releasedir, FUSEClient.u64s([handle, 0, 0]))
        #expect(server.counts.handles == 0)
    }
}
