import Glibc
import LinuxSys

/// Small file-system helpers for cgroupfs, procfs and the jail directory.
enum Files {
    static func read(_ path: String) -> String? {
        SmallFile.read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    static func write(_ path: String, _ text: String, create: Bool = false) throws(Errno) {
        let flags = O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0)
        let fd = try retrying("open \(path)") { Glibc.open(path, flags, 0o644) }
        defer { Glibc.close(fd) }
        var bytes = Array(text.utf8)
        _ = try retrying("write \(path)") { Glibc.write(fd, &bytes, bytes.count) }
    }

    /// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so a reader
    /// sees the old file or the whole new one.
    static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(Errno) {
        let temporary = path + ".tmp"
        let fd = try retrying("open \(temporary)") { Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { let e = Errno.current("write \(temporary)"); Glibc.close(fd); unlink(temporary); throw e }
            done += n
        }
        guard fsync(fd) == 0 else { let e = Errno.current("fsync \(temporary)"); Glibc.close(fd); unlink(temporary); throw e }
        Glibc.close(fd)
        guard rename(temporary, path) == 0 else { let e = Errno.current("rename \(path)"); unlink(temporary); throw e }
    }

    static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(Errno) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST { throw Errno.current("mkdir \(current)") }
        }
    }

    static func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    static func size(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : nil
    }
}
