import FoundationEssentials
import Glibc

/// Small file helpers for the service's state directory.
enum FileIO {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func read(_ path: String, limit: Int = 16 << 20) throws(Failure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: String(cString: strerror(errno))) }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw Failure(description: String(cString: strerror(errno))) }
            if n == 0 { return out }
            out += buffer[0..<n]
            guard out.count <= limit else { throw Failure(description: "larger than \(limit) bytes") }
        }
    }

    /// Writes a temporary file beside `path`, fsyncs it and renames it over `path`: a reader sees
    /// the old contents or the new, never a part.
    static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(Failure) {
        let tmp = path + ".tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(description: "\(tmp): \(String(cString: strerror(errno)))") }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno; close(fd); unlink(tmp)
                throw Failure(description: "\(tmp): \(String(cString: strerror(e)))")
            }
            offset += n
        }
        guard fsync(fd) == 0 else { let e = errno; close(fd); unlink(tmp); throw Failure(description: "fsync \(tmp): \(String(cString: strerror(e)))") }
        close(fd)
        guard rename(tmp, path) == 0 else { let e = errno; unlink(tmp); throw Failure(description: "rename to \(path): \(String(cString: strerror(e)))") }
    }

    static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(Failure) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST { throw Failure(description: "mkdir \(current): \(String(cString: strerror(errno)))") }
        }
    }

    static func entries(_ directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a directory tree (the service's own state: paused sandboxes' snapshots).
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in entries(path) { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

enum Random {
    static func hex(bytes: Int) -> String {
        var g = SystemRandomNumberGenerator()
        var s = ""
        for _ in 0..<bytes { let b = UInt8.random(in: 0...255, using: &g); s += String(b >> 4, radix: 16) + String(b & 15, radix: 16) }
        return s
    }

    static func bytes(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    /// An id in E2B's style: lowercase letters and digits.
    static func sandboxID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        var g = SystemRandomNumberGenerator()
        return "i" + String((0..<19).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &g)] })
    }
}

enum JSONErrors {
    /// One line saying what was wrong with a JSON document, with the field's path.
    static func describe(_ error: any Error) -> String {
        func path(_ p: [any CodingKey]) -> String {
            p.isEmpty ? "the document" : "'" + p.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") + "'"
        }
        guard let e = error as? DecodingError else { return "\(error)" }
        switch e {
        case .typeMismatch(let t, let c): return "\(path(c.codingPath)) must be \(typeName(t))"
        case .valueNotFound(let t, let c): return "\(path(c.codingPath)) must be \(typeName(t)), not null"
        case .keyNotFound(let k, let c): return "\(path(c.codingPath + [k])) is required"
        case .dataCorrupted(let c):
            return c.codingPath.isEmpty ? "the body is not valid JSON" : "\(path(c.codingPath)): \(c.debugDescription)"
        @unknown default: return "\(error)"
        }
    }

    static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is String.Type: "a string"
        case is Int.Type, is Int32.Type, is UInt32.Type, is Int64.Type: "an integer"
        case is UInt64.Type: "a non-negative integer"
        case is Bool.Type: "a boolean"
        case is Double.Type: "a number"
        default:
            "\(t)".hasPrefix("Dictionary") ? "an object" : "\(t)".hasPrefix("Array") ? "an array" : "\(t)"
        }
    }
}
