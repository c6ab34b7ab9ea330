import AgentProtocol
import Glibc

/// The filesystem operations of protocol 1.2 (docs/agent-protocol.md, "Filesystem"), done in
/// the agent's own process: each is a few system calls instead of a guest process.
enum Filesystem {
    /// lstat(2) of `path` as an EntryInfo; `name` overrides the last component (ListDirectory).
    static func entry(_ path: String, users: UserDatabase) -> Result<EntryInfo, Failure> {
        guard valid(path) else { return .failure(invalidPath(path)) }
        var st = stat()
        guard lstat(path, &st) == 0 else { return .failure(errnoFailure("cannot stat \(path)")) }
        return .success(entry(path, name: lastComponent(path), st, users: users))
    }

    static func entry(_ path: String, name: String, _ st: stat, users: UserDatabase) -> EntryInfo {
        let kind = kind(st.st_mode)
        var symlink: EntryInfo.Symlink?
        if kind == .symlink {
            let target = readLink(path) ?? ""
            var resolved = ""
            var targetKind = EntryInfo.Kind.other
            var targetMode: UInt32 = 0
            if let real = realpath(path, nil) {
                resolved = String(cString: real)
                free(real)
                var t = stat()
                if stat(resolved, &t) == 0 {
                    targetKind = self.kind(t.st_mode)
                    targetMode = UInt32(t.st_mode) & 0o7777
                }
            }
            symlink = EntryInfo.Symlink(target: target, resolved: resolved, targetKind: targetKind, targetMode: targetMode)
        }
        return EntryInfo(name: name, path: path, kind: kind, mode: UInt32(st.st_mode) & 0o7777,
                         size: st.st_size < 0 ? 0 : UInt64(st.st_size), uid: st.st_uid, gid: st.st_gid,
                         owner: users.userName(st.st_uid), group: users.groupName(st.st_gid),
                         modifiedSeconds: Int64(st.st_mtim.tv_sec), modifiedNanoseconds: UInt32(clamping: st.st_mtim.tv_nsec),
                         symlink: symlink)
    }

    static func kind(_ mode: mode_t) -> EntryInfo.Kind {
        switch mode & S_IFMT {
        case S_IFREG: .file
        case S_IFDIR: .directory
        case S_IFLNK: .symlink
        default: .other
        }
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// MakeDirectory: true when it created `path`, false when `path` already was a directory.
    static func makeDirectory(_ request: MakeDirectory) -> Result<Bool, Failure> {
        guard valid(request.path) else { return .failure(invalidPath(request.path)) }
        var st = stat()
        if stat(request.path, &st) == 0 {
            return st.st_mode & S_IFMT == S_IFDIR
                ? .success(false) : .failure(Failure(errno: EEXIST, message: "\(request.path) exists and is not a directory"))
        }
        if let failure = makeDirectories(request.path, mode: request.mode, uid: request.uid, gid: request.gid) {
            return .failure(failure)
        }
        return .success(true)
    }

    /// Creates `directory` and its missing parents, each with `mode` (chmod, so no umask) and
    /// owned by uid/gid when the agent is root. An existing directory is left alone.
    static func makeDirectories(_ directory: String, mode: UInt32, uid: UInt32, gid: UInt32) -> Failure? {
        var st = stat()
        if stat(directory, &st) == 0 {
            return st.st_mode & S_IFMT == S_IFDIR ? nil : Failure(errno: ENOTDIR, message: "\(directory) is not a directory")
        }
        let parent = IncomingFile.parent(of: directory)
        if parent != directory && directory != "/" && directory != ".",
           let failure = makeDirectories(parent, mode: mode, uid: uid, gid: gid) {
            return failure
        }
        if mkdir(directory, mode_t(mode)) != 0 {
            if errno == EEXIST { return nil } // made meanwhile, or "a/." after "a"
            return errnoFailure("mkdir \(directory)")
        }
        if getuid() == 0 { _ = chown(directory, uid, gid) }
        _ = chmod(directory, mode_t(mode))
        return nil
    }

    /// Rename: rename(2), then the destination's EntryInfo.
    static func rename(from: String, to: String, users: UserDatabase) -> Result<EntryInfo, Failure> {
        guard valid(from) else { return .failure(invalidPath(from)) }
        guard valid(to) else { return .failure(invalidPath(to)) }
        guard Glibc.rename(from, to) == 0 else { return .failure(errnoFailure("cannot rename \(from) to \(to)")) }
        return entry(to, users: users)
    }

    /// Remove, as envd's (Go's os.RemoveAll): a file, a symlink (never its target) or a whole
    /// directory tree; a path that does not exist is success.
    static func remove(_ path: String) -> Failure? {
        guard valid(path) else { return invalidPath(path) }
        return removeTree(AT_FDCWD, path, shown: path)
    }

    /// Removes `name` relative to `directory` (a descriptor), descending through descriptors so
    /// that a tree of any depth needs no long path strings and never follows a symlink.
    static func removeTree(_ directory: Int32, _ name: String, shown: String) -> Failure? {
        if unlinkat(directory, name, 0) == 0 || errno == ENOENT { return nil }
        guard errno == EISDIR || errno == EPERM else { return errnoFailure("cannot remove \(shown)") }
        let fd = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            return errnoFailure("cannot remove \(shown)")
        }
        guard let dir = fdopendir(fd) else { let f = errnoFailure("cannot read \(shown)"); close(fd); return f }
        defer { closedir(dir) }
        // Entries removed while reading can make readdir skip others: read again until empty.
        for _ in 0..<8 {
            var removedAny = false
            while let e = readdir(dir) {
                let child = entryName(e)
                if child == "." || child == ".." { continue }
                if let failure = removeTree(dirfd(dir), child, shown: shown + "/" + child) { return failure }
                removedAny = true
            }
            if unlinkat(directory, name, AT_REMOVEDIR) == 0 || errno == ENOENT { return nil }
            guard errno == ENOTEMPTY, removedAny else { return errnoFailure("cannot remove \(shown)") }
            rewinddir(dir)
        }
        return errnoFailure("cannot remove \(shown)")
    }

    static func entryName(_ e: UnsafeMutablePointer<dirent>) -> String {
        withUnsafePointer(to: &e.pointee.d_name) {
            String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
        }
    }

    static func valid(_ path: String) -> Bool { !path.isEmpty && !path.utf8.contains(0) }

    static func invalidPath(_ path: String) -> Failure { Failure(errno: EINVAL, message: "invalid path '\(path)'") }

    /// The last component, as Go's FileInfo.Name(): "/" for the root.
    static func lastComponent(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
        if p == "/" { return "/" }
        if let slash = p.lastIndex(of: "/") { return String(p[p.index(after: slash)...]) }
        return String(p)
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
}

/// A ListDirectory in progress: a depth-first walk (pre-order, readdir order, never following a
/// symlink into a directory) that the event loop pumps a batch at a time, so that a large tree
/// costs bounded memory (one open directory per level) and other streams keep moving.
final class DirectoryListing {
    let stream: UInt32
    let root: String
    let depth: Int
    let users: UserDatabase
    /// Open directories, outermost first, with their paths.
    private var stack: [(dir: OpaquePointer, path: String)] = []
    /// Entries read but not sent, and about how many bytes they encode to.
    private var pending: [EntryInfo] = []
    private var pendingBytes = 0
    static let frameTarget = 256 << 10
    static let entriesPerPump = 128

    private init(stream: UInt32, root: String, depth: Int, users: UserDatabase, dir: OpaquePointer) {
        self.stream = stream
        self.root = root
        self.depth = depth
        self.users = users
        stack = [(dir, root)]
    }

    /// Opens `path` (following symlinks: it must lead to a directory).
    static func open(_ path: String, depth: UInt32, stream: UInt32) -> Result<DirectoryListing, Failure> {
        guard Filesystem.valid(path) else { return .failure(Filesystem.invalidPath(path)) }
        var st = stat()
        guard stat(path, &st) == 0 else { return .failure(errnoFailure("cannot list \(path)")) }
        guard st.st_mode & S_IFMT == S_IFDIR else { return .failure(Failure(errno: ENOTDIR, message: "\(path) is not a directory")) }
        guard let dir = opendir(path) else { return .failure(errnoFailure("cannot list \(path)")) }
        var root = Substring(path)
        while root.count > 1 && root.hasSuffix("/") { root = root.dropLast() }
        return .success(DirectoryListing(stream: stream, root: String(root), depth: max(1, Int(depth)), users: UserDatabase.load(), dir: dir))
    }

    var finished: Bool { stack.isEmpty && pending.isEmpty }

    /// Reads up to a batch of entries. Returns the frames to send: Entries when enough has
    /// gathered, then ListEnd (or a Failure) when the walk is over.
    func pump() -> [Frame] {
        var frames: [Frame] = []
        var read = 0
        while read < DirectoryListing.entriesPerPump, let top = stack.last {
            errno = 0
            guard let e = readdir(top.dir) else {
                if errno != 0 {
                    let failure = errnoFailure("cannot read \(top.path)")
                    close()
                    return [Frame(stream: stream, .failure(failure))]
                }
                closedir(top.dir)
                stack.removeLast()
                continue
            }
            let name = Filesystem.entryName(e)
            if name == "." || name == ".." { continue }
            read += 1
            var st = stat()
            guard fstatat(dirfd(top.dir), name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                if errno == ENOENT { continue } // removed since readdir
                let failure = errnoFailure("cannot stat \(Filesystem.join(top.path, name))")
                close()
                return [Frame(stream: stream, .failure(failure))]
            }
            let path = Filesystem.join(top.path, name)
            let info = Filesystem.entry(path, name: name, st, users: users)
            pending.append(info)
            pendingBytes += 64 + info.name.utf8.count + info.path.utf8.count + info.owner.utf8.count + info.group.utf8.count
                + (info.symlink.map { $0.target.utf8.count + $0.resolved.utf8.count } ?? 0)
            if pendingBytes >= DirectoryListing.frameTarget { frames.append(flush()) }
            if info.kind == .directory && stack.count < depth {
                let fd = openat(dirfd(top.dir), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0, let sub = fdopendir(fd) else {
                    if fd >= 0 { Glibc.close(fd) }
                    if errno == ENOENT { continue }
                    let failure = errnoFailure("cannot list \(path)")
                    close()
                    return frames + [Frame(stream: stream, .failure(failure))]
                }
                stack.append((sub, path))
            }
        }
        if stack.isEmpty {
            if !pending.isEmpty { frames.append(flush()) }
            frames.append(Frame(stream: stream, .listEnd))
        }
        return frames
    }

    private func flush() -> Frame {
        defer { pending = []; pendingBytes = 0 }
        return Frame(stream: stream, .entries(pending))
    }

    /// Stops the walk (Cancel, an error, or the connection closing).
    func close() {
        for (dir, _) in stack { closedir(dir) }
        stack = []
        pending = []
    }
}

/// The guest's /etc/passwd and /etc/group, read once per request (they are small, and a guest
/// system call costs milliseconds here, so a listing reads them once, not once per entry).
struct UserDatabase {
    struct User {
        var name: String, uid: UInt32, gid: UInt32, home: String, shell: String
    }
    struct Group {
        var name: String, gid: UInt32, members: [Substring]
    }
    var users: [User] = []
    var groups: [Group] = []

    static func load(passwd: String = "/etc/passwd", group: String = "/etc/group") -> UserDatabase {
        var db = UserDatabase()
        for line in lines(passwd) {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count >= 7, let uid = UInt32(f[2]), let gid = UInt32(f[3]) else { continue }
            db.users.append(User(name: String(f[0]), uid: uid, gid: gid, home: String(f[5]), shell: String(f[6])))
        }
        for line in lines(group) {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count >= 4, let gid = UInt32(f[2]) else { continue }
            db.groups.append(Group(name: String(f[0]), gid: gid, members: f[3].split(separator: ",")))
        }
        return db
    }

    private static func lines(_ path: String) -> [Substring] {
        guard let bytes = readSmallFile(path) else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("#") }
    }

    func userName(_ uid: UInt32) -> String { users.first { $0.uid == uid }?.name ?? "" }
    func groupName(_ gid: UInt32) -> String { groups.first { $0.gid == gid }?.name ?? "" }

    /// A user by name, or by number when `name` is all digits and no user has that name.
    func lookup(_ name: String) -> UserInfo? {
        guard let u = users.first(where: { $0.name == name })
            ?? UInt32(name).flatMap({ uid in users.first { $0.uid == uid } }) else { return nil }
        var ids = [u.gid]
        for g in groups where g.members.contains(where: { $0 == u.name }) && !ids.contains(g.gid) { ids.append(g.gid) }
        return UserInfo(name: u.name, uid: u.uid, gid: u.gid, groups: ids, home: u.home, shell: u.shell)
    }
}

/// Reads a whole file of at most `limit` bytes; nil if it cannot be read.
func readSmallFile(_ path: String, limit: Int = 4 << 20) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while out.count < limit {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}
