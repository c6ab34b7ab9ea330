/// The FUSE wire protocol (version 7, as Linux's include/uapi/linux/fuse.h defines it) as far as
/// Kiln's virtio-fs server speaks it: requests decoded from the bytes a guest put in a
/// virtqueue, replies encoded for it (docs/volumes.md, "Protocol"). Pure Swift over byte arrays,
/// so that a hostile guest's requests can be fuzzed (Fuzz/Sources/FuzzFUSE).

/// Why a request could not be decoded. The server answers EINVAL (or nothing, when not even
/// the header could be read); it never trusts the rest of such a request.
public enum FUSEDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Fewer bytes than the header or the operation's fixed arguments need.
    case short(needed: Int, have: Int)
    /// The header's length disagrees with the bytes the guest supplied.
    case length(header: UInt32, have: Int)
    /// A name that is empty, too long, unterminated, `.`/`..` or holds a `/`.
    case badName
    /// A batch that claims more entries than it carries.
    case badCount(UInt32)

    public var description: String {
        switch self {
        case .short(let needed, let have): "request too short: \(have) bytes, \(needed) needed"
        case .length(let header, let have): "header length \(header), \(have) bytes supplied"
        case .badName: "malformed name"
        case .badCount(let n): "batch of \(n) entries does not fit the request"
        }
    }
}

public enum FUSEOpcode {
    public static let lookup: UInt32 = 1, forget: UInt32 = 2, getattr: UInt32 = 3, setattr: UInt32 = 4
    public static let readlink: UInt32 = 5, symlink: UInt32 = 6, mknod: UInt32 = 8, mkdir: UInt32 = 9
    public static let unlink: UInt32 = 10, rmdir: UInt32 = 11, rename: UInt32 = 12, link: UInt32 = 13
    public static let open: UInt32 = 14, read: UInt32 = 15, write: UInt32 = 16, statfs: UInt32 = 17
    public static let release: UInt32 = 18, fsync: UInt32 = 20, flush: UInt32 = 25, initialize: UInt32 = 26
    public static let opendir: UInt32 = 27, readdir: UInt32 = 28, releasedir: UInt32 = 29, fsyncdir: UInt32 = 30
    public static let access: UInt32 = 34, create: UInt32 = 35, interrupt: UInt32 = 36, destroy: UInt32 = 38
    public static let batchForget: UInt32 = 42, readdirplus: UInt32 = 44, rename2: UInt32 = 45
}

/// fuse_in_header: 40 bytes before every request's arguments.
public struct FUSEHeader: Equatable, Sendable {
    public static let size = 40
    public var length: UInt32, opcode: UInt32, unique: UInt64, nodeID: UInt64
    public var uid: UInt32, gid: UInt32, pid: UInt32
    public init(length: UInt32, opcode: UInt32, unique: UInt64, nodeID: UInt64, uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0) {
        self.length = length; self.opcode = opcode; self.unique = unique; self.nodeID = nodeID
        self.uid = uid; self.gid = gid; self.pid = pid
    }
}

/// One fuse_forget_one of a BATCH_FORGET.
public struct FUSEForget: Equatable, Sendable {
    public var node: UInt64, count: UInt64
    public init(node: UInt64, count: UInt64) { self.node = node; self.count = count }
}

/// fuse_setattr_in: which fields to change (`valid`, FATTR_*) and their values.
public struct FUSESetAttr: Equatable, Sendable {
    public static let mode: UInt32 = 1 << 0, uid: UInt32 = 1 << 1, gid: UInt32 = 1 << 2, size: UInt32 = 1 << 3
    public static let atime: UInt32 = 1 << 4, mtime: UInt32 = 1 << 5, fh: UInt32 = 1 << 6
    public static let atimeNow: UInt32 = 1 << 7, mtimeNow: UInt32 = 1 << 8, lockOwner: UInt32 = 1 << 9
    public static let ctime: UInt32 = 1 << 10, killSUIDGID: UInt32 = 1 << 11
    public var valid: UInt32, fh: UInt64, size: UInt64
    public var atime: UInt64, mtime: UInt64, atimeNsec: UInt32, mtimeNsec: UInt32
    public var mode: UInt32, uid: UInt32, gid: UInt32
    public init(valid: UInt32, fh: UInt64 = 0, size: UInt64 = 0, atime: UInt64 = 0, mtime: UInt64 = 0, atimeNsec: UInt32 = 0,
                mtimeNsec: UInt32 = 0, mode: UInt32 = 0, uid: UInt32 = 0, gid: UInt32 = 0) {
        self.valid = valid; self.fh = fh; self.size = size; self.atime = atime; self.mtime = mtime
        self.atimeNsec = atimeNsec; self.mtimeNsec = mtimeNsec; self.mode = mode; self.uid = uid; self.gid = gid
    }
}

/// A decoded request's operation and arguments. Names are raw bytes (Linux names need not be
/// UTF-8), already checked to be one path component.
public enum FUSEOperation: Equatable, Sendable {
    case initialize(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: UInt32)
    case destroy
    case lookup(name: [UInt8])
    case forget(count: UInt64)
    case batchForget([FUSEForget])
    case getattr
    case setattr(FUSESetAttr)
    case readlink
    case symlink(name: [UInt8], target: [UInt8])
    case mkdir(name: [UInt8], mode: UInt32, umask: UInt32)
    case unlink(name: [UInt8])
    case rmdir(name: [UInt8])
    case rename(newParent: UInt64, from: [UInt8], to: [UInt8], flags: UInt32)
    case link(target: UInt64, name: [UInt8])
    case open(flags: UInt32)
    case opendir(flags: UInt32)
    case create(name: [UInt8], flags: UInt32, mode: UInt32, umask: UInt32)
    case read(handle: UInt64, offset: UInt64, size: UInt32)
    /// The data is `bytes[dataRange]` of the request.
    case write(handle: UInt64, offset: UInt64, dataRange: Range<Int>)
    case readdir(handle: UInt64, offset: UInt64, size: UInt32, plus: Bool)
    case release(handle: UInt64)
    case releasedir(handle: UInt64)
    case flush(handle: UInt64)
    case fsync(handle: UInt64, dataOnly: Bool, directory: Bool)
    case statfs
    case access(mask: UInt32)
    case interrupt
    /// Any opcode Kiln does not serve: answered ENOSYS.
    case unsupported(opcode: UInt32)
}

/// One decoded request: its header and operation.
public struct FUSERequest: Equatable, Sendable {
    public static let maxName = 255
    public static let maxLinkTarget = 4095
    /// The most forgets one BATCH_FORGET may carry (the request is bounded anyway; this bounds work).
    public static let maxBatch = 1 << 16

    public var header: FUSEHeader
    public var operation: FUSEOperation

    /// Whether the kernel expects an answer (FORGET, BATCH_FORGET and INTERRUPT get none).
    public var wantsReply: Bool {
        switch operation {
        case .forget, .batchForget, .interrupt: false
        default: true
        }
    }

    /// Reads just the header, so that even a request whose arguments are malformed can be answered.
    public static func header(_ bytes: [UInt8]) -> FUSEHeader? {
        guard bytes.count >= FUSEHeader.size else { return nil }
        let r = FUSEBytes(bytes)
        return FUSEHeader(length: r.u32(0), opcode: r.u32(4), unique: r.u64(8), nodeID: r.u64(16),
                          uid: r.u32(24), gid: r.u32(28), pid: r.u32(32))
    }

    /// Decodes one request from the bytes of the readable part of a descriptor chain.
    /// Malformed, truncated or oversized input is an error, never a crash.
    public static func decode(_ bytes: [UInt8]) throws(FUSEDecodeError) -> FUSERequest {
        guard let header = header(bytes) else { throw .short(needed: FUSEHeader.size, have: bytes.count) }
        guard header.length >= UInt32(FUSEHeader.size), Int(header.length) <= bytes.count else {
            throw .length(header: header.length, have: bytes.count)
        }
        let end = Int(header.length)
        let r = FUSEBytes(bytes)
        let a = FUSEHeader.size // where the arguments start
        func need(_ n: Int) throws(FUSEDecodeError) {
            guard end - a >= n else { throw .short(needed: a + n, have: end) }
        }
        /// The NUL-terminated component at `offset`, and where the next field starts.
        func name(at offset: Int, max: Int = FUSERequest.maxName, component: Bool = true) throws(FUSEDecodeError) -> ([UInt8], Int) {
            guard offset <= end, let nul = bytes[offset..<end].firstIndex(of: 0) else { throw .badName }
            let n = Array(bytes[offset..<nul])
            guard !n.isEmpty, n.count <= max else { throw .badName }
            if component { guard !n.contains(0x2F), n != [0x2E], n != [0x2E, 0x2E] else { throw .badName } }
            return (n, nul + 1)
        }
        let op: FUSEOperation
        switch header.opcode {
        case FUSEOpcode.initialize:
            try need(16)
            op = .initialize(major: r.u32(a), minor: r.u32(a + 4), maxReadahead: r.u32(a + 8), flags: r.u32(a + 12))
        case FUSEOpcode.destroy: op = .destroy
        case FUSEOpcode.lookup: op = .lookup(name: try name(at: a).0)
        case FUSEOpcode.forget:
            try need(8)
            op = .forget(count: r.u64(a))
        case FUSEOpcode.batchForget:
            try need(8)
            let count = r.u32(a)
            guard count <= UInt32(FUSERequest.maxBatch), Int(count) * 16 <= end - a - 8 else { throw .badCount(count) }
            op = .batchForget((0..<Int(count)).map { i in FUSEForget(node: r.u64(a + 8 + 16 * i), count: r.u64(a + 16 + 16 * i)) })
        case FUSEOpcode.getattr: op = .getattr // fuse_getattr_in's handle is not needed: attributes come from the inode
        case FUSEOpcode.setattr:
            try need(88)
            op = .setattr(FUSESetAttr(valid: r.u32(a), fh: r.u64(a + 8), size: r.u64(a + 16), atime: r.u64(a + 32),
                                      mtime: r.u64(a + 40), atimeNsec: r.u32(a + 56), mtimeNsec: r.u32(a + 60),
                                      mode: r.u32(a + 68), uid: r.u32(a + 76), gid: r.u32(a + 80)))
        case FUSEOpcode.readlink: op = .readlink
        case FUSEOpcode.symlink:
            let (n, next) = try name(at: a)
            op = .symlink(name: n, target: try name(at: next, max: FUSERequest.maxLinkTarget, component: false).0)
        case FUSEOpcode.mkdir:
            try need(8)
            op = .mkdir(name: try name(at: a + 8).0, mode: r.u32(a), umask: r.u32(a + 4))
        case FUSEOpcode.unlink: op = .unlink(name: try name(at: a).0)
        case FUSEOpcode.rmdir: op = .rmdir(name: try name(at: a).0)
        case FUSEOpcode.rename, FUSEOpcode.rename2:
            let fixed = header.opcode == FUSEOpcode.rename ? 8 : 16
            try need(fixed)
            let (from, next) = try name(at: a + fixed)
            op = .rename(newParent: r.u64(a), from: from, to: try name(at: next).0,
                         flags: header.opcode == FUSEOpcode.rename ? 0 : r.u32(a + 8))
        case FUSEOpcode.link:
            try need(8)
            op = .link(target: r.u64(a), name: try name(at: a + 8).0)
        case FUSEOpcode.open, FUSEOpcode.opendir:
            try need(8)
            op = header.opcode == FUSEOpcode.open ? .open(flags: r.u32(a)) : .opendir(flags: r.u32(a))
        case FUSEOpcode.create:
            try need(16)
            op = .create(name: try name(at: a + 16).0, flags: r.u32(a), mode: r.u32(a + 4), umask: r.u32(a + 8))
        case FUSEOpcode.read:
            try need(40)
            op = .read(handle: r.u64(a), offset: r.u64(a + 8), size: r.u32(a + 16))
        case FUSEOpcode.write:
            try need(40)
            let size = Int(r.u32(a + 16))
            guard size <= end - a - 40 else { throw .short(needed: a + 40 + size, have: end) }
            op = .write(handle: r.u64(a), offset: r.u64(a + 8), dataRange: (a + 40)..<(a + 40 + size))
        case FUSEOpcode.readdir, FUSEOpcode.readdirplus:
            try need(40)
            op = .readdir(handle: r.u64(a), offset: r.u64(a + 8), size: r.u32(a + 16), plus: header.opcode == FUSEOpcode.readdirplus)
        case FUSEOpcode.release, FUSEOpcode.releasedir:
            try need(24)
            op = header.opcode == FUSEOpcode.release ? .release(handle: r.u64(a)) : .releasedir(handle: r.u64(a))
        case FUSEOpcode.flush:
            try need(24)
            op = .flush(handle: r.u64(a))
        case FUSEOpcode.fsync, FUSEOpcode.fsyncdir:
            try need(16)
            op = .fsync(handle: r.u64(a), dataOnly: r.u32(a + 8) & 1 != 0, directory: header.opcode == FUSEOpcode.fsyncdir)
        case FUSEOpcode.statfs: op = .statfs
        case FUSEOpcode.access:
            try need(8)
            op = .access(mask: r.u32(a))
        case FUSEOpcode.interrupt: op = .interrupt
        default: op = .unsupported(opcode: header.opcode)
        }
        return FUSERequest(header: header, operation: op)
    }
}

/// Little-endian reads at offsets the caller has bounds-checked.
struct FUSEBytes {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func u32(_ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[o + $1]) << (8 * UInt32($1)) } }
    func u64(_ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[o + $1]) << (8 * UInt64($1)) } }
}

/// Little-endian appends for replies.
public struct FUSEWriter: Sendable {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func u16(_ v: UInt16) { for i in 0..<2 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt16(i)))) } }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func zeros(_ n: Int) { bytes += [UInt8](repeating: 0, count: n) }
    public mutating func pad8() { while bytes.count % 8 != 0 { bytes.append(0) } }
}

/// fuse_attr: what GETATTR, LOOKUP and friends report about an inode.
public struct FUSEAttr: Equatable, Sendable {
    public var ino: UInt64, size: UInt64, blocks: UInt64
    public var atime: UInt64, mtime: UInt64, ctime: UInt64
    public var atimeNsec: UInt32, mtimeNsec: UInt32, ctimeNsec: UInt32
    public var mode: UInt32, nlink: UInt32, uid: UInt32, gid: UInt32, rdev: UInt32, blksize: UInt32
    public static let size = 88

    public init(ino: UInt64 = 0, size: UInt64 = 0, blocks: UInt64 = 0, atime: UInt64 = 0, mtime: UInt64 = 0, ctime: UInt64 = 0,
                atimeNsec: UInt32 = 0, mtimeNsec: UInt32 = 0, ctimeNsec: UInt32 = 0, mode: UInt32 = 0, nlink: UInt32 = 0,
                uid: UInt32 = 0, gid: UInt32 = 0, rdev: UInt32 = 0, blksize: UInt32 = 0) {
        self.ino = ino; self.size = size; self.blocks = blocks; self.atime = atime; self.mtime = mtime; self.ctime = ctime
        self.atimeNsec = atimeNsec; self.mtimeNsec = mtimeNsec; self.ctimeNsec = ctimeNsec; self.mode = mode
        self.nlink = nlink; self.uid = uid; self.gid = gid; self.rdev = rdev; self.blksize = blksize
    }

    func encode(_ w: inout FUSEWriter) {
        for v in [ino, size, blocks, atime, mtime, ctime] { w.u64(v) }
        for v in [atimeNsec, mtimeNsec, ctimeNsec, mode, nlink, uid, gid, rdev, blksize] { w.u32(v) }
        w.u32(0) // flags
    }
}

/// Reply bodies, each as the kernel's fuse_*_out struct.
public enum FUSEReply {
    public static let headerSize = 16

    /// fuse_out_header then the body; `error` is a positive errno (sent negated) or 0.
    public static func message(unique: UInt64, error: Int32 = 0, body: [UInt8] = []) -> [UInt8] {
        var w = FUSEWriter()
        w.u32(UInt32(headerSize + (error == 0 ? body.count : 0)))
        w.u32(UInt32(bitPattern: -error))
        w.u64(unique)
        if error == 0 { w.bytes += body }
        return w.bytes
    }

    /// fuse_entry_out (128 bytes): the node, its generation and how long the guest may cache both.
    public static func entry(node: UInt64, generation: UInt64 = 0, valid: (seconds: UInt64, nsec: UInt32), attr: FUSEAttr) -> [UInt8] {
        var w = FUSEWriter()
        w.u64(node); w.u64(generation); w.u64(valid.seconds); w.u64(valid.seconds); w.u32(valid.nsec); w.u32(valid.nsec)
        attr.encode(&w)
        return w.bytes
    }

    /// fuse_attr_out (104 bytes).
    public static func attr(_ attr: FUSEAttr, valid: (seconds: UInt64, nsec: UInt32)) -> [UInt8] {
        var w = FUSEWriter()
        w.u64(valid.seconds); w.u32(valid.nsec); w.u32(0)
        attr.encode(&w)
        return w.bytes
    }

    /// fuse_open_out (16 bytes).
    public static func open(handle: UInt64, flags: UInt32) -> [UInt8] {
        var w = FUSEWriter()
        w.u64(handle); w.u32(flags); w.u32(0)
        return w.bytes
    }

    public static func written(_ size: UInt32) -> [UInt8] {
        var w = FUSEWriter()
        w.u32(size); w.u32(0)
        return w.bytes
    }

    /// fuse_kstatfs (80 bytes).
    public static func statfs(blocks: UInt64, free: UInt64, available: UInt64, files: UInt64, freeFiles: UInt64,
                              blockSize: UInt32, nameLength: UInt32, fragmentSize: UInt32) -> [UInt8] {
        var w = FUSEWriter()
        for v in [blocks, free, available, files, freeFiles] { w.u64(v) }
        w.u32(blockSize); w.u32(nameLength); w.u32(fragmentSize); w.u32(0)
        w.zeros(24)
        return w.bytes
    }

    /// fuse_init_out (64 bytes, protocol 7.23 and later).
    public static func initialize(minor: UInt32, maxReadahead: UInt32, flags: UInt32, maxWrite: UInt32, maxPages: UInt16) -> [UInt8] {
        var w = FUSEWriter()
        w.u32(7); w.u32(minor); w.u32(maxReadahead); w.u32(flags)
        w.u16(16); w.u16(12) // max_background, congestion_threshold
        w.u32(maxWrite); w.u32(1) // time_gran: nanoseconds
        w.u16(maxPages); w.u16(0)
        w.zeros(64 - w.bytes.count)
        return w.bytes
    }

    /// One fuse_dirent, padded to 8 bytes (24-byte header, then the name).
    public static func dirent(_ w: inout FUSEWriter, ino: UInt64, offset: UInt64, type: UInt32, name: [UInt8]) {
        w.u64(ino); w.u64(offset); w.u32(UInt32(name.count)); w.u32(type)
        w.bytes += name
        w.pad8()
    }

    public static func direntSize(nameLength: Int, plus: Bool) -> Int {
        (plus ? 128 : 0) + (24 + nameLength + 7) & ~7
    }
}

/// FUSE_INIT flags Kiln uses (fuse.h).
public enum FUSEInitFlag {
    public static let asyncRead: UInt32 = 1 << 0
    public static let atomicOTrunc: UInt32 = 1 << 3
    public static let bigWrites: UInt32 = 1 << 5
    public static let autoInvalData: UInt32 = 1 << 12
    public static let doReaddirplus: UInt32 = 1 << 13
    public static let parallelDirops: UInt32 = 1 << 18
    public static let maxPages: UInt32 = 1 << 22
    public static let cacheSymlinks: UInt32 = 1 << 23
}

/// fuse_open_out flags.
public enum FUSEOpenFlag {
    public static let directIO: UInt32 = 1 << 0
    public static let keepCache: UInt32 = 1 << 1
    public static let cacheDir: UInt32 = 1 << 3
}
