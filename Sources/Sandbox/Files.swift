import Glibc
import LinuxSys

/// The few file-system helpers the sandbox's runtime and template directories need.
enum Files {
    /// `mkdir -p`: creates `path` and its missing parents (errors show up at first use).
    static func makeDirectories(_ path: String, mode: mode_t = 0o755) {
        var partial = ""
        for component in path.split(separator: "/") {
            partial += "/" + component
            _ = mkdir(partial, mode)
        }
    }

    /// The names in `directory`, without "." and "..".
    static func entries(_ directory: String) -> [String] {
        guard let d = opendir(directory) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a directory of plain files (a sandbox's runtime directory, a snapshot).
    static func removeFlatDirectory(_ directory: String) {
        for name in entries(directory) { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    /// A small file's bytes (at most `limit`), nil if it cannot be read.
    static func read(_ path: String, limit: Int = 1 << 16) -> [UInt8]? {
        SmallFile.read(path, limit: limit)
    }

    /// Writes `bytes` to a new file at `path` (mode 0644); false on any error.
    static func write(_ path: String, _ bytes: [UInt8]) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}
