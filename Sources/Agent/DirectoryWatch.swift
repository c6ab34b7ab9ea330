import AgentProtocol
import Glibc

/// A WatchDirectory stream: an inotify descriptor over the directory (and, recursively, every
/// directory below it, including ones created later), read by the event loop while the host
/// keeps up. Event kinds follow envd's (fsnotify's) mapping of inotify masks.
final class DirectoryWatch {
    let stream: UInt32
    private(set) var fd: Int32
    let recursive: Bool
    /// Watch descriptor to the directory's path relative to the watched one ("" for itself).
    private var directories: [Int32: String] = [:]
    private var rootDescriptor: Int32 = -1
    private let root: String
    private var buffer = [UInt8](repeating: 0, count: 64 << 10)

    static let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB
                             | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

    private init(stream: UInt32, fd: Int32, root: String, recursive: Bool) {
        self.stream = stream
        self.fd = fd
        self.root = root
        self.recursive = recursive
    }

    static func open(_ path: String, recursive: Bool, stream: UInt32) -> Result<DirectoryWatch, Failure> {
        guard Filesystem.valid(path) else { return .failure(Filesystem.invalidPath(path)) }
        var st = stat()
        guard stat(path, &st) == 0 else { return .failure(errnoFailure("cannot watch \(path)")) }
        guard st.st_mode & S_IFMT == S_IFDIR else { return .failure(Failure(errno: ENOTDIR, message: "\(path) is not a directory")) }
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return .failure(errnoFailure("inotify")) }
        let w = DirectoryWatch(stream: stream, fd: fd, root: path, recursive: recursive)
        let wd = inotify_add_watch(fd, path, DirectoryWatch.mask)
        guard wd >= 0 else { let f = errnoFailure("cannot watch \(path)"); Glibc.close(fd); return .failure(f) }
        w.rootDescriptor = wd
        w.directories[wd] = ""
        if recursive { w.addTree("") }
        return .success(w)
    }

    /// Watches every directory below `relative` (not following symlinks). Directories that
    /// vanish meanwhile are skipped: their removal shows up as an event of their parent.
    private func addTree(_ relative: String) {
        let base = relative.isEmpty ? root : Filesystem.join(root, relative)
        guard let dir = opendir(base) else { return }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            let name = Filesystem.entryName(e)
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR else { continue }
            let child = relative.isEmpty ? name : relative + "/" + name
            let wd = inotify_add_watch(fd, Filesystem.join(root, child), DirectoryWatch.mask | UInt32(IN_DONT_FOLLOW))
            if wd >= 0 {
                directories[wd] = child
                addTree(child)
            }
        }
    }

    /// Reads what inotify has queued. Returns the events and, when the watch is over (the
    /// directory went away, the kernel's queue overflowed), the Failure that ends the stream.
    func read() -> ([WatchEvent], Failure?) {
        var events: [WatchEvent] = []
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR || errno == EAGAIN { return ([], nil) }
            return ([], errnoFailure("inotify"))
        }
        var offset = 0
        let headerSize = MemoryLayout<inotify_event>.size
        var end: Failure?
        while offset + headerSize <= n {
            let (wd, mask, length) = buffer.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                let e = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                return (e.wd, e.mask, Int(e.len))
            }
            let nameStart = offset + headerSize
            let nameBytes = buffer[nameStart..<min(nameStart + length, n)].prefix { $0 != 0 }
            offset = nameStart + length
            if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                end = Failure(errno: EOVERFLOW, message: "too many changes at once: events were lost")
                continue
            }
            guard let directory = directories[wd] else { continue }
            if mask & UInt32(IN_IGNORED) != 0 {
                directories[wd] = nil
                if wd == rootDescriptor { end = Failure(errno: ENOENT, message: "\(root) was removed") }
                continue
            }
            let isSelf = nameBytes.isEmpty
            // A subdirectory's own removal or move is already an event of its parent.
            if isSelf && wd != rootDescriptor { continue }
            let name = String(decoding: nameBytes, as: UTF8.self)
            let relative = isSelf ? "" : (directory.isEmpty ? name : directory + "/" + name)
            let kind: WatchEvent.Kind? =
                if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 { .create }
                else if mask & UInt32(IN_MODIFY) != 0 { .write }
                else if mask & UInt32(IN_DELETE | IN_DELETE_SELF) != 0 { .remove }
                else if mask & UInt32(IN_MOVED_FROM | IN_MOVE_SELF) != 0 { .rename }
                else if mask & UInt32(IN_ATTRIB) != 0 { .chmod }
                else { nil }
            guard let kind else { continue }
            events.append(WatchEvent(kind, name: relative))
            if recursive && kind == .create && mask & UInt32(IN_ISDIR) != 0 {
                let wd = inotify_add_watch(fd, Filesystem.join(root, relative), DirectoryWatch.mask | UInt32(IN_DONT_FOLLOW))
                if wd >= 0 {
                    directories[wd] = relative
                    addTree(relative)
                }
            }
        }
        return (events, end)
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
