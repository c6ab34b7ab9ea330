import Glibc
import LinuxSys
import Sandbox

/// Kiln's own guest kernel and initramfs: found in the cache, or built on first use
/// by the scripts in `Kernels/` and `rootfs/` (their progress goes to stderr).
enum DefaultImages {
    static var cacheDir: String { Templates.cacheDirectory }

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

    /// The disk whose agent boots any image (rootfs/build-agent-disk.sh), resolved: a rebuild
    /// moves the cache link, and a template must keep naming the file it was made from.
    static func agentDisk() throws(Failure) -> String {
        resolved(try artifact(cached: "\(cacheDir)/agent-disk/agent.ext4", script: "rootfs/build-agent-disk.sh", what: "agent disk"))
    }

    /// The root filesystem for `kiln run --image`: nil or "default" is Kiln's own image
    /// (built on first use); a name is looked up in the cache; anything with a slash is a path.
    static func image(named name: String?) throws(Failure) -> String {
        guard let name, name != "default" else {
            return try artifact(cached: "\(cacheDir)/images/default.ext4", script: "rootfs/build-image.sh", what: "sandbox image")
        }
        if name.contains("/") {
            guard access(name, R_OK) == 0 else { throw Failure(message: "no image at \(name): \(String(cString: strerror(errno)))") }
            return name
        }
        let path = "\(cacheDir)/images/\(name).ext4"
        // The Debian image is built on request like the default one. Its cache link moves when
        // the image is rebuilt: a template must keep naming the file it was made from.
        if name == "debian" {
            return resolved(try artifact(cached: path, script: "rootfs/build-debian-image.sh", what: "Debian image"))
        }
        guard access(path, R_OK) == 0 else {
            throw Failure(message: "no image named '\(name)' (\(path) does not exist; pass a path, or an OCI image with a tag or registry, e.g. \(name):latest)")
        }
        return path
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

    /// `path` with every symbolic link resolved (itself if it cannot be).
    static func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    static func env(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        let s = String(cString: p)
        return s.isEmpty ? nil : s
    }
}
