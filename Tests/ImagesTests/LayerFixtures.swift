import Foundation
import Glibc
import CLinux
import Images

/// One tar entry for a test layer, written by Python's tarfile (which writes any name, hostile ones too).
struct E {
    var name: String
    var type = "0"
    var data = ""
    var link = ""
    var mode = 0o644
    var uid = 0
    var gid = 0
    var mtime = 1_600_000_000
    var major = 0
    var minor = 0
    var xattrs: [String: String] = [:]
    var size: Int?

    static func file(_ name: String, _ data: String = "", mode: Int = 0o644) -> E { E(name: name, data: data, mode: mode) }
    static func dir(_ name: String, mode: Int = 0o755) -> E { E(name: name, type: "5", mode: mode) }
    static func symlink(_ name: String, _ target: String) -> E { E(name: name, type: "2", link: target, mode: 0o777) }
    static func hardlink(_ name: String, _ target: String) -> E { E(name: name, type: "1", link: target) }

    var python: String {
        let x = xattrs.map { "\"SCHILY.xattr.\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ")
        return "(\(Self.q(name)), b\"\(type)\", \(Self.q(data)).encode(), \(Self.q(link)), \(mode), \(uid), \(gid), \(mtime), \(major), \(minor), {\(x)}, \(size.map(String.init) ?? "None"))"
    }

    static func q(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n") + "\""
    }
}

extension Scratch {
    /// Writes a layer tar (then gzip or zstd as asked) of `entries` in order; returns its source.
    func layer(_ name: String, _ entries: [E], compression: LayerCompression = .none) throws -> LayerSource {
        try python("""
        import tarfile, io
        entries = [\(entries.map(\.python).joined(separator: ",\n"))]
        with tarfile.open("\(name).tar", "w", format=tarfile.PAX_FORMAT) as t:
            for (n, ty, data, link, mode, uid, gid, mtime, ma, mi, x, size) in entries:
                i = tarfile.TarInfo(n); i.type = ty; i.linkname = link; i.mode = mode; i.uid = uid; i.gid = gid
                i.mtime = mtime; i.devmajor = ma; i.devminor = mi; i.pax_headers = x
                i.size = len(data) if size is None else size
                t.addfile(i, io.BytesIO(data) if ty == b"0" else None)
        """)
        switch compression {
        case .none: return LayerSource(path: file("\(name).tar"), compression: .none, digest: "sha256:\(name)")
        case .gzip:
            try run(["sh", "-c", "gzip -c \(name).tar > \(name).tar.gz"])
            return LayerSource(path: file("\(name).tar.gz"), compression: .gzip, digest: "sha256:\(name)")
        case .zstd:
            try run(["sh", "-c", "zstd -q -c \(name).tar > \(name).tar.zst"])
            return LayerSource(path: file("\(name).tar.zst"), compression: .zstd, digest: "sha256:\(name)")
        }
    }
}

/// What a path is, as lstat sees it.
struct Node: Equatable {
    var type: mode_t
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int
    var mtime: Int
    var inode: UInt64
    var rdev: UInt64

    init?(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        type = st.st_mode & S_IFMT; mode = UInt32(st.st_mode & 0o7777); uid = st.st_uid; gid = st.st_gid
        size = Int(st.st_size); mtime = st.st_mtim.tv_sec; inode = UInt64(st.st_ino); rdev = UInt64(st.st_rdev)
    }
}

func exists(_ path: String) -> Bool { Node(path) != nil }

func linkTarget(_ path: String) -> String? { try? FileManager.default.destinationOfSymbolicLink(atPath: path) }

func contents(_ path: String) -> String? { FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } }

/// Every path under `root`, relative, sorted.
func tree(_ root: String) -> [String] {
    (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
}

func xattr(_ path: String, _ name: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = lgetxattr(path, name, &buffer, buffer.count)
    return n < 0 ? nil : String(decoding: buffer[..<n], as: UTF8.self)
}
