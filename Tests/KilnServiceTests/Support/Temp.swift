import Glibc
import Synchronization

enum Temp {
    static let leftovers = Mutex<[String]>([])

    /// Removes `path` when the test process exits (for fixtures shared by a suite, which has no teardown).
    static func removeAtExit(_ path: String) {
        let first = leftovers.withLock { l in l.append(path); return l.count == 1 }
        if first { atexit { for p in Temp.leftovers.withLock({ $0 }) { Temp.remove(p) } } }
    }

    /// A new empty directory under /tmp.
    static func directory(_ prefix: String = "kiln-svc-tests") -> String {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    static func write(_ path: String, _ text: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// Removes a directory tree the test made.
    static func remove(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            if let dir = opendir(path) {
                var names: [String] = []
                while let e = readdir(dir) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(dir)
                for n in names { remove(path + "/" + n) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}
