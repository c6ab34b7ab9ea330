import Glibc

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
}
