import Glibc
import LinuxSys

/// Kiln's own guest kernel and initramfs: found in the cache, or built on first use
/// by the scripts in `Kernels/` and `rootfs/` (their progress goes to stderr).
enum DefaultImages {
    static var cacheDir: String { env("KILN_CACHE_DIR") ?? "/var/cache/kiln" }

    /// The source tree holding the build scripts: $KILN_SOURCE_DIR, else the tree this binary was built from.
    static var sourceDir: String {
        if let dir = env("KILN_SOURCE_DIR") { return dir }
        var path = #filePath // <root>/Sources/kiln/DefaultImages.swift
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
        return path
    }

    static func kernel() throws(Failure) -> String {
        try artifact(cached: "\(cacheDir)/kernel/vmlinux", script: "Kernels/build.sh", what: "guest kernel")
    }

    static func initramfs() throws(Failure) -> String {
        try artifact(cached: "\(cacheDir)/initramfs/initramfs.cpio", script: "rootfs/build-initramfs.sh", what: "initramfs")
    }

    struct Failure: Error { let message: String }

    static func artifact(cached: String, script: String, what: String) throws(Failure) -> String {
        if access(cached, R_OK) == 0 { return cached }
        let path = "\(sourceDir)/\(script)"
        guard access(path, X_OK) == 0 else {
            throw Failure(message: "no \(what) at \(cached) and no build script at \(path); pass a path or set KILN_SOURCE_DIR")
        }
        writeRaw(2, "kiln: building the default \(what) (first use; this takes a few minutes)...\n")
        let result: (status: Int32, stdout: [UInt8])
        do { result = try runProgram([path]) } catch { throw Failure(message: "cannot run \(path): \(error)") }
        guard result.status == 0 else { throw Failure(message: "building the \(what) failed (\(path) exited with \(result.status))") }
        let lines = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n")
        guard let last = lines.last, access(String(last), R_OK) == 0 else {
            throw Failure(message: "\(path) did not report where it put the \(what)")
        }
        return String(last)
    }

    static func env(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        let s = String(cString: p)
        return s.isEmpty ? nil : s
    }
}
