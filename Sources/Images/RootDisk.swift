import FoundationEssentials
import Glibc
import LinuxSys

/// The filesystem of a root disk (docs/images.md, "Layers and root disks", for the measurements).
public enum RootDiskFormat: String, Sendable {
    /// Read-write in the guest over Kiln's host-side copy-on-write layer: the default.
    case ext4
    /// Smaller and read-only: the guest needs an overlay (tmpfs or a second disk) to write.
    case erofs
}

public struct RootDiskOptions: Sendable {
    public var format: RootDiskFormat
    /// Free space the guest gets for its writes on an ext4 disk. The file is sparse: unwritten
    /// space costs the host nothing beyond ext4's metadata (docs/images.md).
    public var headroomBytes: Int64
    public var limits: UnpackLimits

    public init(format: RootDiskFormat = .ext4, headroomBytes: Int64 = 4 << 30, limits: UnpackLimits = UnpackLimits()) {
        self.format = format; self.headroomBytes = headroomBytes; self.limits = limits
    }
}

public enum RootDiskError: Error, CustomStringConvertible, Sendable {
    case unpack(UnpackError)
    /// The cache key is not a digest-like name ("sha256:<hex>").
    case badKey(String)
    /// Preparing the cache directory, the temporary root or the final rename.
    case filesystem(Errno)
    /// mkfs failed; its output.
    case mkfs(String)

    public var description: String {
        switch self {
        case .unpack(let e): return "\(e)"
        case .badKey(let k): return "bad root disk key '\(k)'"
        case .filesystem(let e): return "root disk: \(e)"
        case .mkfs(let out): return "root disk: \(out)"
        }
    }
}

/// Converts an image's layers into a root disk, once per image: the disk is cached under
/// `cacheRoot` by `key` (the image's manifest digest), made under a temporary name and renamed
/// into place, so a half-made disk is never found. Layers are unpacked into a private 0700
/// directory next to the disk and removed after. Run as root (owners, device nodes).
public enum RootDisk {
    /// The path the disk for `key` has (or will have) in `cacheRoot`.
    public static func diskPath(cacheRoot: String, key: String, format: RootDiskFormat = .ext4) throws(RootDiskError) -> String {
        guard !key.isEmpty, key.utf8.count <= 200,
              key.utf8.allSatisfy({ $0 < 128 && (isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_")) }) else {
            throw .badKey(key)
        }
        return cacheRoot + "/" + key.split(separator: ":", omittingEmptySubsequences: false).joined(separator: "-") + "." + format.rawValue
    }

    /// The cached disk for `key`, if one was made.
    public static func cached(cacheRoot: String, key: String, format: RootDiskFormat = .ext4) -> String? {
        guard let path = try? diskPath(cacheRoot: cacheRoot, key: key, format: format) else { return nil }
        return access(path, F_OK) == 0 ? path : nil
    }

    /// Returns the disk for `key`, making it from `layers` (lowest first) if it is not cached.
    /// Two callers building the same key at once: one builds, the other waits and reuses it.
    public static func build(layers: [LayerSource], cacheRoot: String, key: String,
                             options: RootDiskOptions = RootDiskOptions()) throws(RootDiskError) -> String {
        let final = try diskPath(cacheRoot: cacheRoot, key: key, format: options.format)
        if access(final, F_OK) == 0 { return final }
        try makeDirectories(cacheRoot)
        let lock = try sys("open lock") { open(final + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        defer { close(lock) }
        _ = try sys("flock") { flock(lock, LOCK_EX) }
        if access(final, F_OK) == 0 { return final }

        // Holding the key's lock, any build directory of this key is a crashed builder's: removed.
        let prefix = ".build-" + String(final.split(separator: "/").last!) + "-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: cacheRoot)) ?? [] where name.hasPrefix(prefix) {
            try? removeTree(cacheRoot + "/" + name)
        }
        var template = Array((cacheRoot + "/" + prefix + "XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw .filesystem(.current("mkdtemp in \(cacheRoot)"))
        }
        let work = String(cString: made)
        defer { try? removeTree(work) }
        let root = work + "/rootfs"
        _ = try sys("mkdir \(root)") { mkdir(root, 0o755) }

        do {
            let applier = try LayerApplier(root: root, limits: options.limits)
            for layer in layers { try applier.apply(layer) }
        } catch {
            throw .unpack(error)
        }

        let disk = work + "/disk." + options.format.rawValue
        switch options.format {
        case .ext4:
            let usage = try measure(root)
            let size = ext4Size(usage, headroom: options.headroomBytes)
            let fd = try sys("create \(disk)") { open(disk, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
            defer { close(fd) }
            _ = try sys("truncate") { ftruncate(fd, off_t(size)) }
            // Same shape as rootfs/image-common.sh make_ext4: no journal (writes land in the
            // sandbox's throw-away layer), inode tables initialised now so the guest kernel does no
            // lazy-init writes. Inodes for the image and as many again for the guest.
            let inodes = max(size / 16384, Int64(usage.inodes) * 2 + 16384)
            try run(["mkfs.ext4", "-q", "-F", "-L", "kiln-root", "-b", "4096", "-I", "256", "-N", String(inodes),
                     "-O", "^has_journal", "-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0", "-d", root, disk])
        case .erofs:
            // Uncompressed: decompression would run in the guest kernel, emulated here.
            try run(["mkfs.erofs", "--quiet", disk, root])
        }
        let done = try sys("open \(disk)") { open(disk, O_RDONLY | O_CLOEXEC) }
        _ = fsync(done)
        close(done)
        _ = try sys("rename to \(final)") { rename(disk, final) }
        let dir = open(cacheRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { _ = fsync(dir); close(dir) }
        return final
    }

    // MARK: Sizing

    struct Usage { var bytes: Int64; var inodes: Int }

    /// Blocks the tree needs on a 4 KiB-block ext4, and its inodes. Symbolic links are counted as
    /// one block (targets over 59 bytes take one) and never followed.
    static func measure(_ root: String) throws(RootDiskError) -> Usage {
        var usage = Usage(bytes: 4096, inodes: 1)
        var pending: [[UInt8]] = [Array(root.utf8)]
        while let dir = pending.popLast() {
            guard let stream = LayerApplier.withCString(dir, { opendir($0) }) else { throw .filesystem(.current("opendir")) }
            defer { closedir(stream) }
            while let entry = readdir(stream) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix(while: { $0 != 0 })) }
                if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { continue }
                let path = dir + [UInt8(ascii: "/")] + name
                var st = stat()
                guard LayerApplier.withCString(path, { lstat($0, &st) }) == 0 else { continue }
                usage.inodes += 1
                usage.bytes += (Int64(st.st_size) + 4095) / 4096 * 4096
                if st.st_mode & S_IFMT == S_IFDIR { pending.append(path) }
            }
        }
        return usage
    }

    /// Content, plus a tenth for ext4's block maps and directories, plus inode tables, plus a
    /// fixed 64 MiB for group descriptors and bitmaps, plus the guest's headroom; whole MiB.
    static func ext4Size(_ usage: Usage, headroom: Int64) -> Int64 {
        let metadata = Int64(usage.inodes) * 2 * 256 + usage.bytes / 10 + (64 << 20)
        let raw = usage.bytes + metadata + headroom
        return ((raw + (1 << 20) - 1) >> 20) << 20
    }

    // MARK: Helpers

    private static func run(_ argv: [String]) throws(RootDiskError) {
        // Through sh so that the tool's stderr comes back in the error rather than on ours.
        let result: (status: Int32, stdout: [UInt8])
        do { result = try runProgram(["sh", "-c", "exec \"$0\" \"$@\" 2>&1"] + argv) } catch { throw .filesystem(error) }
        guard result.status == 0 else {
            let text = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n").suffix(3).joined(separator: "; ")
            throw .mkfs("\(argv[0]) failed (exit \(result.status)): \(text)")
        }
    }

    private static func makeDirectories(_ path: String) throws(RootDiskError) {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw .filesystem(.current("mkdir \(prefix)")) }
        }
    }

    /// Removes a directory tree without following links (a hostile rootfs is full of them).
    static func removeTree(_ path: String) throws(RootDiskError) {
        let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        let name = String(path[path.index(after: path.lastIndex(of: "/") ?? path.startIndex)...])
        do {
            let applier = try LayerApplier(root: parent.isEmpty ? "/" : parent)
            try applier.remove(Array(name.utf8))
        } catch {
            throw .unpack(error)
        }
    }

    private static func sys(_ call: String, _ body: () -> Int32) throws(RootDiskError) -> Int32 {
        let rc = body()
        if rc < 0 { throw .filesystem(.current(call)) }
        return rc
    }
}
