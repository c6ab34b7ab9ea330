import Devices
import FuzzSupport
import Glibc
import GuestMemory

/// Fuzzes the FUSE request decoder and the virtio-fs server (docs/volumes.md, "Protocol"): the
/// input is one request as a hostile guest could put it in the request queue. Requests are
/// decoded, then served by a read-only server over a scratch directory (so the fuzzer cannot
/// fill the disk); the header is patched to agree with the input's length half the time, so that
/// mutations reach the arguments. A reply must be framed as the kernel expects.
nonisolated(unsafe) var server: FUSEServer! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if server == nil {
        let root = "/tmp/kiln-fuzz-fuse-\(getpid())"
        mkdir(root, 0o755)
        mkdir(root + "/dir", 0o755)
        let fd = open(root + "/file", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = write(fd, "contents", 8)
        close(fd)
        symlink("/etc/passwd", root + "/link")
        server = try! FUSEServer(path: root, options: ShareOptions(readOnly: true, uid: 0, gid: 0))
    }
    guard size > 0 else { return 0 }
    var bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] & 1 != 0 && bytes.count >= 4 {
        let n = UInt32(bytes.count)
        for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: n >> (8 * UInt32(i))) }
    }
    let decoded = try? FUSERequest.decode(bytes)
    if let decoded, decoded.header.length > UInt32(bytes.count) { fatalError("decoded past the input") }
    if let reply = server.handle(bytes) {
        guard reply.count >= 16, Int(reply[0]) | Int(reply[1]) << 8 | Int(reply[2]) << 16 | Int(reply[3]) << 24 == reply.count else {
            fatalError("reply framing")
        }
    } else if let decoded, decoded.wantsReply {
        fatalError("a request that wants a reply got none")
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzFUSE_main; hand control to libFuzzer.
@_cdecl("FuzzFUSE_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
