import Glibc
import LinuxSys
import Synchronization

/// How one shared host directory is served (docs/volumes.md).
public struct ShareOptions: Sendable, Equatable {
    public enum Cache: String, Sendable, Equatable, CaseIterable {
        /// Nothing cached in the guest: every access asks the host (the host may change files at any time).
        case none
        /// Attributes and names cached for a second; data dropped when a file's size or mtime changes.
        case auto
        /// Cached until the guest forgets them: right when the host does not change the tree while the sandbox runs.
        case always
    }
    public var readOnly: Bool
    /// Owner of every file, directory and link the guest creates.
    public var uid: UInt32
    public var gid: UInt32
    public var cache: Cache

    public init(readOnly: Bool = false, uid: UInt32, gid: UInt32, cache: Cache? = nil) {
        self.readOnly = readOnly; self.uid = uid; self.gid = gid
        // A read-only share is normally a checkout the host leaves alone while the sandbox runs.
        self.cache = cache ?? (readOnly ? .always : .auto)
    }
}

/// A FUSE passthrough server for one host directory, answering a guest's requests
/// (docs/volumes.md, "Confinement"). Every inode is an O_PATH descriptor; every name the guest
/// sends is one component resolved with openat2 beneath its parent, never following a symlink
/// and never leaving the share. Files are opened again through /proc/self/fd only when they are
/// regular files or directories, so device nodes and FIFOs in the share are never opened.
public final class FUSEServer: Sendable {
    public static let rootNode: UInt64 = 1
    public static let maxWrite = 1 << 20
    /// The largest readable part of a request the device accepts (a WRITE of maxWrite and its headers).
    public static let maxRequest = maxWrite + 4096
    static let protocolMinor: UInt32 = 31

    public let path: String
    public let options: ShareOptions
    let procFD: Int32

    struct Inode {
        let fd: Int32
        let dev: UInt64, ino: UInt64
        let mode: UInt32
        var lookups: UInt64
    }
    struct Handle {
        let fd: Int32
        let directory: Bool
    }
    struct Identity: Hashable { let dev: UInt64, ino: UInt64 }
    struct State {
        var inodes: [UInt64: Inode] = [:]
        var byIdentity: [Identity: UInt64] = [:]
        var nextNode: UInt64 = 2
        var handles: [UInt64: Handle] = [:]
        var nextHandle: UInt64 = 1
    }
    private let state: Mutex<State>

    public enum OpenError: Error, CustomStringConvertible {
        case open(String, Errno)
        case notDirectory(String)
        public var description: String {
            switch self {
            case .open(let path, let e): "cannot open share \(path): \(e)"
            case .notDirectory(let path): "share \(path) is not a directory"
            }
        }
    }

    /// Opens the share's root and this process's /proc/self/fd: both stay usable inside the
    /// jail, whose root holds neither (docs/volumes.md, "The jail").
    public init(path: String, options: ShareOptions) throws(OpenError) {
        let rootFD = Glibc.open(path, Beneath.pathOnly | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw .open(path, Errno.current("open")) }
        var st = stat()
        guard fstatat(rootFD, "", &st, Beneath.emptyPath | AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            Glibc.close(rootFD)
            throw .notDirectory(path)
        }
        let proc = Glibc.open("/proc/self/fd", Beneath.pathOnly | O_DIRECTORY | O_CLOEXEC)
        guard proc >= 0 else { Glibc.close(rootFD); throw .open("/proc/self/fd", Errno.current("open")) }
        self.path = path
        self.options = options
        procFD = proc
        var s = State()
        s.inodes[FUSEServer.rootNode] = Inode(fd: rootFD, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino), mode: st.st_mode, lookups: 1)
        s.byIdentity[Identity(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))] = FUSEServer.rootNode
        state = Mutex(s)
    }

    deinit {
        state.withLock { s in
            for i in s.inodes.values { Glibc.close(i.fd) }
            for h in s.handles.values { Glibc.close(h.fd) }
        }
        Glibc.close(procFD)
    }

    /// How many inodes and open handles the guest holds (tests check that FORGET releases them).
    public var counts: (inodes: Int, handles: Int) { state.withLock { ($0.inodes.count, $0.handles.count) } }

    /// Serves one request (the readable bytes of a chain); nil when the operation has no reply.
    public func handle(_ bytes: [UInt8]) -> [UInt8]? {
        let request: FUSERequest
        do { request = try FUSERequest.decode(bytes) } catch {
            guard let header = FUSERequest.header(bytes) else { return nil }
            return FUSEReply.message(unique: header.unique, error: EINVAL)
        }
        if case .write = request.operation { return write(bytes, request: request) }
        let unique = request.header.unique
        let result = state.withLock { s in Result { () throws(Errno) in try serve(request, &s) } }
        guard request.wantsReply else { return nil }
        switch result {
        case .success(let body): return FUSEReply.message(unique: unique, body: body)
        case .failure(let e): return FUSEReply.message(unique: unique, error: e.code == 0 ? EIO : e.code)
        }
    }

    var timeout: (seconds: UInt64, nsec: UInt32) {
        switch options.cache {
        case .none: (0, 0)
        case .auto: (1, 0)
        case .always: (86400, 0)
        }
    }

    // MARK: - Operations

    private func serve(_ request: FUSERequest, _ s: inout State) throws(Errno) -> [UInt8] {
        let node = request.header.nodeID
        let ro = options.readOnly
        switch request.operation {
        case .initialize(let major, let minor, let readahead, let flags):
            guard major == 7 else {
                // A newer major: answer with ours and the kernel retries or gives up (fuse.h, "INIT").
                if major > 7 { return FUSEReply.initialize(minor: FUSEServer.protocolMinor, maxReadahead: 0, flags: 0, maxWrite: 0, maxPages: 0) }
                throw Errno(EPROTO)
            }
            var wanted = FUSEInitFlag.asyncRead | FUSEInitFlag.bigWrites | FUSEInitFlag.maxPages | FUSEInitFlag.parallelDirops
            if options.cache == .auto { wanted |= FUSEInitFlag.autoInvalData }
            if options.cache == .always { wanted |= FUSEInitFlag.cacheSymlinks }
            return FUSEReply.initialize(minor: min(minor, FUSEServer.protocolMinor), maxReadahead: readahead, flags: flags & wanted,
                                        maxWrite: UInt32(FUSEServer.maxWrite), maxPages: UInt16(FUSEServer.maxWrite / 4096))
        case .destroy:
            for (n, i) in s.inodes where n != FUSEServer.rootNode { Glibc.close(i.fd) }
            for h in s.handles.values { Glibc.close(h.fd) }
            s.inodes = s.inodes.filter { $0.key == FUSEServer.rootNode }
            s.byIdentity = s.byIdentity.filter { $0.value == FUSEServer.rootNode }
            s.handles = [:]
            return []
        case .lookup(let name):
            let parent = try directory(node, s)
            return try entry(parent, name, &s)
        case .forget(let count):
            forget(node, count, &s)
            return []
        case .batchForget(let list):
            for f in list { forget(f.node, f.count, &s) }
            return []
        case .getattr:
            return FUSEReply.attr(try attributes(try inode(node, s).fd), valid: timeout)
        case .setattr(let change):
            guard !ro else { throw Errno(EROFS) }
            return try setattr(try inode(node, s), change, s)
        case .readlink:
            let i = try inode(node, s)
            guard i.mode & S_IFMT == S_IFLNK else { throw Errno(EINVAL) }
            var buffer = [UInt8](repeating: 0, count: FUSERequest.maxLinkTarget + 1)
            let n = buffer.withUnsafeMutableBytes { readlinkat(i.fd, "", $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
            guard n >= 0 else { throw Errno.current("readlinkat") }
            return Array(buffer[0..<n])
        case .symlink(let name, let target):
            guard !ro else { throw Errno(EROFS) }
            let parent = try directory(node, s)
            try withCName(target) { t throws(Errno) in
                try withCName(name) { n throws(Errno) in
                    guard symlinkat(t, parent.fd, n) == 0 else { throw Errno.current("symlinkat") }
                    own(parent.fd, n)
                }
            }
            return try entry(parent, name, &s)
        case .mkdir(let name, let mode, _):
            guard !ro else { throw Errno(EROFS) }
            let parent = try directory(node, s)
            try withCName(name) { n throws(Errno) in
                // The kernel applied the guest's umask already (no FUSE_DONT_MASK); setuid/setgid bits are never created.
                guard mkdirat(parent.fd, n, mode_t(mode & 0o1777)) == 0 else { throw Errno.current("mkdirat") }
                own(parent.fd, n)
            }
            return try entry(parent, name, &s)
        case .unlink(let name), .rmdir(let name):
            guard !ro else { throw Errno(EROFS) }
            let parent = try directory(node, s)
            var flags: Int32 = 0
            if case .rmdir = request.operation { flags = AT_REMOVEDIR }
            try withCName(name) { n throws(Errno) in guard unlinkat(parent.fd, n, flags) == 0 else { throw Errno.current("unlinkat") } }
            return []
        case .rename(let newParent, let from, let to, let flags):
            guard !ro else { throw Errno(EROFS) }
            // A whiteout is a device node: refused like any other.
            guard flags & ~(Beneath.renameNoReplace | Beneath.renameExchange) == 0 else { throw Errno(EINVAL) }
            let a = try directory(node, s), b = try directory(newParent, s)
            try withCName(from) { f throws(Errno) in try withCName(to) { t throws(Errno) in try Beneath.rename(a.fd, f, b.fd, t, flags: flags) } }
            return []
        case .link(let target, let name):
            guard !ro else { throw Errno(EROFS) }
            let old = try inode(target, s), parent = try directory(node, s)
            guard old.mode & S_IFMT != S_IFDIR else { throw Errno(EPERM) }
            try withCName(name) { n throws(Errno) in
                // linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc link to our own descriptor does not.
                guard linkat(procFD, String(old.fd), parent.fd, n, AT_SYMLINK_FOLLOW) == 0 else { throw Errno.current("linkat") }
            }
            return try entry(parent, name, &s)
        case .open(let flags):
            let i = try inode(node, s)
            guard i.mode & S_IFMT == S_IFREG else { throw Errno(i.mode & S_IFMT == S_IFDIR ? EISDIR : EACCES) }
            let f = try openFlags(flags)
            let fd = try reopen(i, f)
            return FUSEReply.open(handle: add(Handle(fd: fd, directory: false), &s), flags: openReplyFlags(directory: false))
        case .opendir:
            let i = try directory(node, s)
            let fd = try reopen(i, O_RDONLY | O_DIRECTORY)
            return FUSEReply.open(handle: add(Handle(fd: fd, directory: true), &s), flags: openReplyFlags(directory: true))
        case .create(let name, let flags, let mode, _):
            guard !ro else { throw Errno(EROFS) }
            let parent = try directory(node, s)
            var f = try openFlags(flags)
            let exclusive = Int32(bitPattern: flags) & O_EXCL != 0
            let fd: Int32 = try withCName(name) { n throws(Errno) in
                // Try to create it first, so that only a file this call made is given the share's owner.
                do throws(Errno) {
                    let fd = try Beneath.open(parent.fd, n, flags: f | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode & 0o777)
                    if geteuid() != options.uid || getegid() != options.gid { _ = fchown(fd, options.uid, options.gid) }
                    return fd
                } catch where error.code == EEXIST && !exclusive {
                    f &= ~O_CREAT
                    return try Beneath.open(parent.fd, n, flags: f | O_NOFOLLOW)
                }
            }
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { Glibc.close(fd); throw Errno(EACCES) }
            let entryBytes: [UInt8]
            do throws(Errno) { entryBytes = try entry(parent, name, &s) } catch { Glibc.close(fd); throw error }
            return entryBytes + FUSEReply.open(handle: add(Handle(fd: fd, directory: false), &s), flags: openReplyFlags(directory: false))
        case .read(let handle, let offset, let size):
            let h = try file(handle, s)
            guard offset <= UInt64(Int64.max) else { throw Errno(EINVAL) }
            var data = [UInt8](repeating: 0, count: min(Int(size), FUSEServer.maxWrite))
            var done = 0
            while done < data.count {
                let n = data.withUnsafeMutableBytes { pread(h.fd, $0.baseAddress! + done, $0.count - done, off_t(offset) + off_t(done)) }
                if n < 0 { if errno == EINTR { continue }; if done > 0 { break }; throw Errno.current("pread") }
                if n == 0 { break }
                done += n
            }
            return Array(data[0..<done])
        case .write:
            preconditionFailure("WRITE is served by write(_:request:)")
        case .readdir(let handle, let offset, let size, let plus):
            guard let h = s.handles[handle], h.directory else { throw Errno(EBADF) }
            return try readdir(h, parent: node, offset: offset, size: Int(min(size, UInt32(FUSEServer.maxWrite))), plus: plus, &s)
        case .release(let handle), .releasedir(let handle):
            if let h = s.handles.removeValue(forKey: handle) { Glibc.close(h.fd) }
            return []
        case .flush(let handle):
            _ = try file(handle, s)
            return []
        case .fsync(let handle, let dataOnly, _):
            guard let h = s.handles[handle] else { throw Errno(EBADF) }
            guard (dataOnly ? fdatasync(h.fd) : fsync(h.fd)) == 0 else { throw Errno.current("fsync") }
            return []
        case .statfs:
            let st = try Beneath.fileSystem(try inode(node, s).fd)
            return FUSEReply.statfs(blocks: st.blocks, free: st.free, available: st.available, files: st.files, freeFiles: st.freeFiles,
                                    blockSize: UInt32(truncatingIfNeeded: st.blockSize), nameLength: UInt32(truncatingIfNeeded: st.nameLength),
                                    fragmentSize: UInt32(truncatingIfNeeded: st.fragmentSize))
        case .access(let mask):
            // access(2)'s modes only, as the kernel checks them: the guest's u32 is not an Int32.
            guard mask & ~UInt32(R_OK | W_OK | X_OK) == 0 else { throw Errno(EINVAL) }
            let i = try inode(node, s)
            if ro && Int32(mask) & W_OK != 0 { throw Errno(EROFS) }
            guard i.mode & S_IFMT == S_IFREG || i.mode & S_IFMT == S_IFDIR else { return [] }
            guard faccessat(procFD, String(i.fd), Int32(mask), 0) == 0 else { throw Errno.current("faccessat") }
            return []
        case .interrupt:
            return [] // requests are served one at a time and to the end
        case .unsupported:
            throw Errno(ENOSYS)
        }
    }

    /// WRITE: the data stays in the request bytes; `serve` never sees it.
    public func write(_ bytes: [UInt8], request: FUSERequest) -> [UInt8] {
        guard case .write(let handle, let offset, let range) = request.operation else { return FUSEReply.message(unique: request.header.unique, error: EINVAL) }
        let result = state.withLock { s in
            Result { () throws(Errno) -> [UInt8] in
                guard !options.readOnly else { throw Errno(EROFS) }
                let h = try file(handle, s)
                guard offset <= UInt64(Int64.max) else { throw Errno(EINVAL) }
                var done = 0
                while done < range.count {
                    let n = bytes.withUnsafeBytes { b in pwrite(h.fd, b.baseAddress! + range.lowerBound + done, range.count - done, off_t(offset) + off_t(done)) }
                    if n < 0 { if errno == EINTR { continue }; if done > 0 { break }; throw Errno.current("pwrite") }
                    done += n
                }
                return FUSEReply.written(UInt32(done))
            }
        }
        switch result {
        case .success(let body): return FUSEReply.message(unique: request.header.unique, body: body)
        case .failure(let e): return FUSEReply.message(unique: request.header.unique, error: e.code)
        }
    }

    // MARK: - Inodes

    private func inode(_ node: UInt64, _ s: State) throws(Errno) -> Inode {
        guard let i = s.inodes[node] else { throw Errno(ESTALE) }
        return i
    }

    private func directory(_ node: UInt64, _ s: State) throws(Errno) -> Inode {
        let i = try inode(node, s)
        guard i.mode & S_IFMT == S_IFDIR else { throw Errno(ENOTDIR) }
        return i
    }

    private func file(_ handle: UInt64, _ s: State) throws(Errno) -> Handle {
        guard let h = s.handles[handle], !h.directory else { throw Errno(EBADF) }
        return h
    }

    /// Resolves one component beneath `parent` and counts a lookup: the entry the guest caches.
    private func entry(_ parent: Inode, _ name: [UInt8], _ s: inout State) throws(Errno) -> [UInt8] {
        let (node, st) = try lookup(parent, name, &s)
        return FUSEReply.entry(node: node, valid: timeout, attr: attr(st))
    }

    private func lookup(_ parent: Inode, _ name: [UInt8], _ s: inout State) throws(Errno) -> (UInt64, stat) {
        let fd = try withCName(name) { n throws(Errno) in try Beneath.open(parent.fd, n, flags: Beneath.pathOnly | O_NOFOLLOW) }
        var st = stat()
        guard fstatat(fd, "", &st, Beneath.emptyPath | AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = Errno.current("fstatat"); Glibc.close(fd); throw e
        }
        let id = Identity(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        if let existing = s.byIdentity[id], var i = s.inodes[existing] {
            Glibc.close(fd)
            i.lookups += 1
            s.inodes[existing] = i
            return (existing, st)
        }
        let node = s.nextNode
        s.nextNode += 1
        s.inodes[node] = Inode(fd: fd, dev: id.dev, ino: id.ino, mode: st.st_mode, lookups: 1)
        s.byIdentity[id] = node
        return (node, st)
    }

    private func forget(_ node: UInt64, _ count: UInt64, _ s: inout State) {
        guard node != FUSEServer.rootNode, var i = s.inodes[node] else { return }
        i.lookups = i.lookups > count ? i.lookups - count : 0
        if i.lookups > 0 { s.inodes[node] = i; return }
        s.inodes[node] = nil
        s.byIdentity[Identity(dev: i.dev, ino: i.ino)] = nil
        Glibc.close(i.fd)
    }

    private func add(_ h: Handle, _ s: inout State) -> UInt64 {
        let n = s.nextHandle
        s.nextHandle += 1
        s.handles[n] = h
        return n
    }

    /// Opens a regular file or directory inode for I/O through our own /proc/self/fd link.
    private func reopen(_ i: Inode, _ flags: Int32) throws(Errno) -> Int32 {
        // The one resolution that must follow a (magic) link: our own descriptor's, checked to be a file or directory.
        try withCName(Array(String(i.fd).utf8)) { n throws(Errno) in try Beneath.open(procFD, n, flags: flags | O_NOCTTY, resolve: 0) }
    }

    /// The guest's open flags that the host honours; writes on a read-only share are refused here.
    private func openFlags(_ raw: UInt32) throws(Errno) -> Int32 {
        let flags = Int32(bitPattern: raw)
        let access = flags & O_ACCMODE
        if options.readOnly && (access != O_RDONLY || flags & O_TRUNC != 0) { throw Errno(EROFS) }
        return access | (flags & (O_APPEND | O_TRUNC | O_SYNC | O_DSYNC))
    }

    private func openReplyFlags(directory: Bool) -> UInt32 {
        switch options.cache {
        case .none: directory ? 0 : FUSEOpenFlag.directIO
        case .auto: 0
        case .always: directory ? FUSEOpenFlag.cacheDir : FUSEOpenFlag.keepCache
        }
    }

    /// Gives a file the guest just created the share's owner (a jailed VMM already runs as that
    /// owner; a VMM running as root must chown).
    private func own(_ dirfd: Int32, _ name: UnsafePointer<CChar>) {
        guard geteuid() != options.uid || getegid() != options.gid else { return }
        _ = fchownat(dirfd, name, options.uid, options.gid, AT_SYMLINK_NOFOLLOW)
    }

    private func attributes(_ fd: Int32) throws(Errno) -> FUSEAttr {
        var st = stat()
        guard fstatat(fd, "", &st, Beneath.emptyPath | AT_SYMLINK_NOFOLLOW) == 0 else { throw Errno.current("fstatat") }
        return attr(st)
    }

    private func attr(_ st: stat) -> FUSEAttr {
        FUSEAttr(ino: UInt64(st.st_ino), size: UInt64(st.st_size), blocks: UInt64(st.st_blocks),
                 atime: UInt64(bitPattern: Int64(st.st_atim.tv_sec)), mtime: UInt64(bitPattern: Int64(st.st_mtim.tv_sec)),
                 ctime: UInt64(bitPattern: Int64(st.st_ctim.tv_sec)), atimeNsec: UInt32(st.st_atim.tv_nsec),
                 mtimeNsec: UInt32(st.st_mtim.tv_nsec), ctimeNsec: UInt32(st.st_ctim.tv_nsec), mode: st.st_mode,
                 nlink: UInt32(truncatingIfNeeded: st.st_nlink), uid: st.st_uid, gid: st.st_gid,
                 rdev: UInt32(truncatingIfNeeded: st.st_rdev), blksize: UInt32(truncatingIfNeeded: st.st_blksize))
    }

    private func setattr(_ i: Inode, _ c: FUSESetAttr, _ s: State) throws(Errno) -> [UInt8] {
        let regular = i.mode & S_IFMT == S_IFREG, dir = i.mode & S_IFMT == S_IFDIR
        let link = String(i.fd)
        // Ownership on the host is the share's choice, not the guest's: a chown is accepted and
        // changes nothing (as NFS's all_squash), so that `tar -x` or `cp -a` as guest root still work.
        if c.valid & FUSESetAttr.mode != 0 {
            guard regular || dir else { throw Errno(EOPNOTSUPP) }
            guard fchmodat(procFD, link, mode_t(c.mode & 0o1777), 0) == 0 else { throw Errno.current("fchmodat") }
        }
        if c.valid & FUSESetAttr.size != 0 {
            guard regular else { throw Errno(dir ? EISDIR : EINVAL) }
            guard c.size <= UInt64(Int64.max) else { throw Errno(EFBIG) }
            if c.valid & FUSESetAttr.fh != 0, let h = s.handles[c.fh], !h.directory {
                guard ftruncate(h.fd, off_t(c.size)) == 0 else { throw Errno.current("ftruncate") }
            } else {
                let fd = try reopen(i, O_WRONLY)
                defer { Glibc.close(fd) }
                guard ftruncate(fd, off_t(c.size)) == 0 else { throw Errno.current("ftruncate") }
            }
        }
        let timeBits = FUSESetAttr.atime | FUSESetAttr.mtime | FUSESetAttr.atimeNow | FUSESetAttr.mtimeNow
        if c.valid & timeBits != 0 {
            guard regular || dir else { throw Errno(EOPNOTSUPP) }
            func spec(_ set: UInt32, _ now: UInt32, _ sec: UInt64, _ nsec: UInt32) -> timespec {
                if c.valid & now != 0 { return timespec(tv_sec: 0, tv_nsec: 0x3fff_ffff) } // UTIME_NOW
                if c.valid & set != 0 { return timespec(tv_sec: Int(Int64(bitPattern: sec)), tv_nsec: Int(nsec % 1_000_000_000)) }
                return timespec(tv_sec: 0, tv_nsec: 0x3fff_fffe) // UTIME_OMIT
            }
            var times = [spec(FUSESetAttr.atime, FUSESetAttr.atimeNow, c.atime, c.atimeNsec),
                         spec(FUSESetAttr.mtime, FUSESetAttr.mtimeNow, c.mtime, c.mtimeNsec)]
            guard utimensat(procFD, link, &times, 0) == 0 else { throw Errno.current("utimensat") }
        }
        return FUSEReply.attr(try attributes(i.fd), valid: timeout)
    }

    /// READDIR and READDIRPLUS: the directory's entries from `offset` (a getdents cookie) while they fit in `size`.
    private func readdir(_ h: Handle, parent: UInt64, offset: UInt64, size: Int, plus: Bool, _ s: inout State) throws(Errno) -> [UInt8] {
        guard offset <= UInt64(Int64.max), lseek(h.fd, off_t(offset), SEEK_SET) >= 0 else { throw Errno.current("lseek") }
        var buffer = [UInt8](repeating: 0, count: max(size, 512))
        let n = try buffer.withUnsafeMutableBytes { b in Result { () throws(Errno) in try Beneath.directoryEntries(h.fd, into: b) } }.get()
        var w = FUSEWriter()
        var at = 0
        let dirInode = s.inodes[parent]
        while at + 19 <= n {
            let r = FUSEBytes(buffer)
            let ino = r.u64(at), next = r.u64(at + 8)
            let recordLength = Int(buffer[at + 16]) | Int(buffer[at + 17]) << 8
            let type = buffer[at + 18]
            guard recordLength >= 19, at + recordLength <= n else { break }
            let name = Array(buffer[(at + 19)..<(at + recordLength)].prefix { $0 != 0 })
            guard w.bytes.count + FUSEReply.direntSize(nameLength: name.count, plus: plus) <= size else { break }
            if plus {
                let dots = name == [0x2E] || name == [0x2E, 0x2E]
                if !dots, let dirInode, let found = try? lookup(dirInode, name, &s) {
                    w.bytes += FUSEReply.entry(node: found.0, valid: timeout, attr: attr(found.1))
                } else {
                    w.zeros(128) // node 0: the kernel makes no entry (and counts no lookup)
                }
            }
            FUSEReply.dirent(&w, ino: ino, offset: next, type: UInt32(type), name: name)
            at += recordLength
        }
        return w.bytes
    }
}

/// Calls `body` with `name` as a NUL-terminated C string (names are bytes, not necessarily UTF-8).
func withCName<T>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) throws(Errno) -> T) throws(Errno) -> T {
    var z = name
    z.append(0)
    return try z.withUnsafeBufferPointer { b throws(Errno) in
        try b.withMemoryRebound(to: CChar.self) { c throws(Errno) in try body(c.baseAddress!) }
    }
}
