import CLinux
import Glibc
import LinuxSys

/// Applies image layers in order into a root directory (OCI image-spec layer.md): whiteouts
/// remove what lower layers made, entries are created with their owners, modes, times and
/// xattrs. Every path is resolved from the root one component at a time with O_NOFOLLOW, so an
/// entry never reaches through a symbolic link and nothing is written outside the root.
/// Ownership and device nodes need root; an unprivileged caller gets its own uid on files.
///
/// The root must be private to the caller while layers are applied (RootDisk puts it inside a
/// 0700 directory): the checks hold against hostile layers, not against a concurrent writer.
public final class LayerApplier {
    /// Paths with more components are refused: real images stay far below, and the removal
    /// of a tree holds one descriptor per level.
    public static let maxDepth = 256
    public static let maxPathBytes = 4096

    private let root: FileDescriptor
    private let limits: UnpackLimits
    private let privileged = geteuid() == 0
    private var totalSize: Int64 = 0
    private var entryCount = 0
    // The layer being applied.
    private var digest = ""
    private var entryPath: String?
    /// Every path this layer made, and their parents: whiteouts only remove what lower layers made.
    private var madeByLayer: Set<[UInt8]> = []
    /// Directories' times are set once the layer is done, since creating children changes them.
    private var directoryTimes: [([[UInt8]], timespec)] = []

    public init(root: String, limits: UnpackLimits = UnpackLimits()) throws(UnpackError) {
        do { self.root = try FileDescriptor.open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW) } catch {
            throw UnpackError(layer: "-", entry: nil, reason: .filesystem(error))
        }
        self.limits = limits
    }

    /// Applies one layer blob, decompressing it as its media type says.
    public func apply(_ layer: LayerSource) throws(UnpackError) {
        digest = layer.digest
        entryPath = nil
        let reader: TarReader
        do { reader = TarReader(try layer.compression.decompressing(FileByteSource(path: layer.path))) } catch {
            throw UnpackError(layer: layer.digest, entry: nil, reason: .archive(error))
        }
        try apply(reader, digest: layer.digest)
    }

    /// Applies the entries of an archive already open; `digest` names the layer in errors.
    public func apply(_ reader: TarReader, digest: String) throws(UnpackError) {
        self.digest = digest
        madeByLayer = []
        directoryTimes = []
        while true {
            entryPath = nil
            let entry: TarEntry?
            do { entry = try reader.next() } catch { throw fail(.archive(error)) }
            guard let entry else { break }
            entryPath = entry.path
            try applyEntry(entry, reader)
        }
        entryPath = nil
        for (components, time) in directoryTimes.reversed() {
            if components.isEmpty { var t = [time, time]; _ = futimens(root.raw, &t); continue }
            guard let parent = try? openDirectory(components.dropLast(), create: false) else { continue }
            setTimes(parent.raw, components.last!, time)
        }
    }

    // MARK: Entries

    private func applyEntry(_ entry: TarEntry, _ reader: TarReader) throws(UnpackError) {
        entryCount += 1
        if entryCount > limits.maxEntries { throw fail(.tooManyEntries(limit: limits.maxEntries)) }
        if entry.size > limits.maxEntrySize { throw fail(.entryTooLarge(size: entry.size, limit: limits.maxEntrySize)) }
        totalSize += entry.size
        if totalSize > limits.maxTotalSize { throw fail(.imageTooLarge(limit: limits.maxTotalSize)) }
        if entry.isSparse { throw fail(.sparse) }
        guard let components = Self.components(entry.pathBytes) else { throw fail(.unsafePath) }
        let time = timespec(tv_sec: Int(entry.modificationTime), tv_nsec: Int(entry.modificationNanoseconds))

        guard let name = components.last else {
            // "./": the root directory itself.
            if entry.kind == .directory {
                try check(fchown(root.raw, uid_t(entry.uid), gid_t(entry.gid)), "chown /", ownership: true)
                try check(fchmod(root.raw, mode_t(entry.mode)), "chmod /")
                directoryTimes.append(([], time))
            }
            return
        }
        let parents = components.dropLast()
        if name.starts(with: Self.whiteoutPrefix) {
            try whiteout(parents: parents, name: Array(name.dropFirst(Self.whiteoutPrefix.count)))
            return
        }
        guard let parent = try openDirectory(parents, create: true) else { return }
        for i in 1...components.count { madeByLayer.insert(Self.joined(components[..<i])) }
        let dir = parent.raw

        switch entry.kind {
        case .directory:
            var st = stat()
            if At.stat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT != S_IFDIR {
                try removeTree(dir, name)
            }
            if At.mkdir(dir, name, 0o700) != 0 && errno != EEXIST { throw fail(.filesystem(.current("mkdir"))) }
            // Now known to be a directory of ours, not a link: the *at calls below may follow.
            let fd = At.open(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            guard fd >= 0 else { throw fail(.filesystem(.current("open"))) }
            let owned = FileDescriptor(owning: fd)
            try check(fchown(owned.raw, uid_t(entry.uid), gid_t(entry.gid)), "chown", ownership: true)
            try check(fchmod(owned.raw, mode_t(entry.mode)), "chmod")
            try setXattrs(entry, fd: owned.raw, parent: dir, name: name)
            directoryTimes.append((components, time))

        case .regular:
            try removeExisting(dir, name)
            let fd = At.open(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw fail(.filesystem(.current("create"))) }
            let owned = FileDescriptor(owning: fd)
            do throws(TarError) { try reader.copyContents(to: owned.raw) } catch { throw fail(.archive(error)) }
            // chown clears setuid bits and file capabilities: owner first, then mode and xattrs.
            try check(fchown(owned.raw, uid_t(entry.uid), gid_t(entry.gid)), "chown", ownership: true)
            try check(fchmod(owned.raw, mode_t(entry.mode)), "chmod")
            try setXattrs(entry, fd: owned.raw, parent: dir, name: name)
            var times = [time, time]
            try check(futimens(owned.raw, &times), "utimens")

        case .symbolicLink:
            try removeExisting(dir, name)
            // Stored as written: the target is meant for the guest and never resolved here.
            try check(At.symlink(entry.linkTargetBytes, dir, name), "symlink")
            try check(At.chown(dir, name, uid_t(entry.uid), gid_t(entry.gid), AT_SYMLINK_NOFOLLOW), "chown", ownership: true)
            try setXattrs(entry, fd: nil, parent: dir, name: name)
            setTimes(dir, name, time)

        case .hardLink:
            try hardLink(entry, components: components, parent: dir, name: name)

        case .characterDevice, .blockDevice, .fifo:
            try removeExisting(dir, name)
            let type: mode_t = entry.kind == .fifo ? S_IFIFO : entry.kind == .blockDevice ? S_IFBLK : S_IFCHR
            let device = Self.makeDevice(entry.deviceMajor, entry.deviceMinor)
            try check(At.mknod(dir, name, type | 0o600, entry.kind == .fifo ? 0 : device), "mknod")
            try check(At.chown(dir, name, uid_t(entry.uid), gid_t(entry.gid), AT_SYMLINK_NOFOLLOW), "chown", ownership: true)
            // Just made by mknodat, so not a link; opening a device node to fchmod it could block.
            try check(At.chmod(dir, name, mode_t(entry.mode), 0), "chmod")
            try setXattrs(entry, fd: nil, parent: dir, name: name)
            setTimes(dir, name, time)

        case .other(let type):
            throw fail(.unsupportedType(type))
        }
    }

    private func hardLink(_ entry: TarEntry, components: [[UInt8]], parent: Int32, name: [UInt8]) throws(UnpackError) {
        let target = entry.linkTarget
        guard let targetComponents = Self.components(entry.linkTargetBytes), let targetName = targetComponents.last else {
            throw fail(.badHardLink("target '\(target)' is outside the root"))
        }
        if targetComponents == components { return }  // a link to itself: nothing to do
        guard let targetParent = try openDirectory(targetComponents.dropLast(), create: false) else {
            throw fail(.badHardLink("target '\(target)' is not in the layers applied so far"))
        }
        var st = stat()
        guard At.stat(targetParent.raw, targetName, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw fail(.badHardLink("target '\(target)' is not in the layers applied so far"))
        }
        guard st.st_mode & S_IFMT != S_IFDIR else { throw fail(.badHardLink("target '\(target)' is a directory")) }
        try removeExisting(parent, name)
        // Flags 0: a symbolic link target is linked itself, never followed.
        try check(At.link(targetParent.raw, targetName, parent, name, 0), "link")
    }

    // MARK: Whiteouts (layer.md, "Whiteouts")

    static let whiteoutPrefix = Array(".wh.".utf8)
    static let opaqueMarker = Array(".wh..wh..opq".utf8)

    private func whiteout(parents: ArraySlice<[UInt8]>, name: [UInt8]) throws(UnpackError) {
        // A whiteout in a directory no lower layer made has nothing to hide.
        guard let parent = try openDirectory(parents, create: false) else { return }
        if Self.whiteoutPrefix + name == Self.opaqueMarker {
            try makeOpaque(parent.raw, path: Array(parents))
            return
        }
        guard !name.isEmpty, name != Array(".".utf8), name != Array("..".utf8) else { throw fail(.unsafePath) }
        if madeByLayer.contains(Self.joined(parents + [name])) {
            // This layer remade NAME before whiting it out: the lower NAME goes, its own entries stay.
            let fd = At.open(parent.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            if fd >= 0 { let owned = FileDescriptor(owning: fd); try makeOpaque(owned.raw, path: Array(parents) + [name]) }
            return
        }
        try removeTree(parent.raw, name)
    }

    /// Removes what lower layers put in a directory, keeping what this layer made.
    private func makeOpaque(_ dir: Int32, path: [[UInt8]]) throws(UnpackError) {
        for child in try listDirectory(dir) {
            let childPath = path + [child]
            if !madeByLayer.contains(Self.joined(childPath[...])) { try removeTree(dir, child); continue }
            let fd = At.open(dir, child, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            if fd >= 0 { let owned = FileDescriptor(owning: fd); try makeOpaque(owned.raw, path: childPath) }
        }
    }

    // MARK: Paths

    /// The components of an entry path: "." and empty ones dropped; absolute paths, `..`, too
    /// many or too long refused.
    static func components(_ path: [UInt8]) -> [[UInt8]]? {
        guard path.first != UInt8(ascii: "/"), path.count <= maxPathBytes else { return nil }
        var out: [[UInt8]] = []
        for part in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.elementsEqual(".".utf8) { continue }
            if part.elementsEqual("..".utf8) { return nil }
            out.append(Array(part))
        }
        return out.count <= maxDepth ? out : nil
    }

    static func joined(_ components: ArraySlice<[UInt8]>) -> [UInt8] {
        Array(components.joined(separator: [UInt8(ascii: "/")]))
    }

    /// Opens a directory below the root without following any symbolic link; missing parents are
    /// made (0755, root's) when `create`, otherwise nil.
    private func openDirectory(_ components: ArraySlice<[UInt8]>, create: Bool) throws(UnpackError) -> FileDescriptor? {
        var current = FileDescriptor(owning: dup(root.raw))
        guard current.raw >= 0 else { throw fail(.filesystem(.current("dup"))) }
        for (i, component) in components.enumerated() {
            var next = At.open(current.raw, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            if next < 0 && errno == ENOENT {
                guard create else { return nil }
                if At.mkdir(current.raw, component, 0o755) != 0 && errno != EEXIST { throw fail(.filesystem(.current("mkdir"))) }
                next = At.open(current.raw, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            }
            if next < 0 {
                let code = errno
                let path = String(decoding: Self.joined(components.prefix(i + 1)), as: UTF8.self)
                var st = stat()
                if code == ENOTDIR || code == ELOOP, At.stat(current.raw, component, &st, AT_SYMLINK_NOFOLLOW) == 0 {
                    throw fail(st.st_mode & S_IFMT == S_IFLNK ? .throughSymlink(path) : .notADirectory(path))
                }
                throw fail(.filesystem(Errno(code, call: "open \(path)")))
            }
            current = FileDescriptor(owning: next)
        }
        return current
    }

    // MARK: Removal

    /// Removes `name` directly under the root, with everything below it.
    func remove(_ name: [UInt8]) throws(UnpackError) { try removeTree(root.raw, name) }

    private func removeExisting(_ dir: Int32, _ name: [UInt8]) throws(UnpackError) {
        var st = stat()
        guard At.stat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR { try removeTree(dir, name) } else { try check(At.unlink(dir, name, 0), "unlink") }
    }

    /// Removes `name` under `dir` and, for a directory, everything in it; links are removed, never followed.
    private func removeTree(_ dir: Int32, _ name: [UInt8]) throws(UnpackError) {
        var st = stat()
        guard At.stat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            let fd = At.open(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0)
            guard fd >= 0 else { throw fail(.filesystem(.current("open"))) }
            let owned = FileDescriptor(owning: fd)
            for child in try listDirectory(owned.raw) { try removeTree(owned.raw, child) }
            try check(At.unlink(dir, name, AT_REMOVEDIR), "rmdir")
        } else {
            try check(At.unlink(dir, name, 0), "unlink")
        }
    }

    private func listDirectory(_ dir: Int32) throws(UnpackError) -> [[UInt8]] {
        let copy = dup(dir)
        guard copy >= 0, let stream = fdopendir(copy) else {
            if copy >= 0 { Glibc.close(copy) }
            throw fail(.filesystem(.current("opendir")))
        }
        defer { closedir(stream) }
        rewinddir(stream)  // the duplicate shares its offset with the caller's descriptor
        var names: [[UInt8]] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix(while: { $0 != 0 })) }
            if name == [UInt8(ascii: ".")] || name == [UInt8(ascii: "."), UInt8(ascii: ".")] { continue }
            names.append(name)
        }
        return names
    }

    // MARK: Metadata

    private func setXattrs(_ entry: TarEntry, fd: Int32?, parent: Int32, name: [UInt8]) throws(UnpackError) {
        for (key, value) in entry.xattrs.sorted(by: { $0.key < $1.key }) {
            let rc = value.withUnsafeBytes { v in
                if let fd { return fsetxattr(fd, key, v.baseAddress, v.count, 0) }
                // No descriptor for links and device nodes: their parent's, through /proc, and l* to not follow.
                return Self.withCString(Array("/proc/self/fd/\(parent)/".utf8) + name) { lsetxattr($0, key, v.baseAddress, v.count, 0) }
            }
            // Filesystems without user xattrs on links and the like: the attribute is dropped, as Docker does.
            if rc != 0 && errno != ENOTSUP && errno != EPERM { throw fail(.filesystem(.current("setxattr \(key)"))) }
        }
    }

    private func setTimes(_ dir: Int32, _ name: [UInt8], _ time: timespec) {
        // Times are best effort: a time the filesystem cannot store is not worth refusing the image.
        _ = At.utimens(dir, name, time, AT_SYMLINK_NOFOLLOW)
    }

    private func check(_ rc: Int32, _ call: String, ownership: Bool = false) throws(UnpackError) {
        guard rc != 0 else { return }
        // Unprivileged callers cannot give files away; they keep their own uid.
        if ownership && !privileged && errno == EPERM { return }
        throw fail(.filesystem(.current(call)))
    }

    private func fail(_ reason: UnpackError.Reason) -> UnpackError {
        UnpackError(layer: digest, entry: entryPath, reason: reason)
    }

    static func makeDevice(_ major: UInt32, _ minor: UInt32) -> dev_t {
        // glibc's makedev, a macro Swift does not import.
        let ma = UInt64(major), mi = UInt64(minor)
        return dev_t((ma & 0xFFF) << 8 | (ma & ~0xFFF) << 32 | (mi & 0xFF) | (mi & ~0xFF) << 12)
    }

    static func withCString<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
        var terminated = bytes
        terminated.append(0)
        return terminated.withUnsafeBufferPointer { b in b.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) } }
    }
}

/// The *at calls over byte-array names. Distinct names on purpose: Swift passes a [UInt8] to a C
/// `const char *` parameter as it is, without a terminating NUL, so an overload of Glibc's own name
/// could silently lose to Glibc's.
private enum At {
    static func open(_ dir: Int32, _ name: [UInt8], _ flags: Int32, _ mode: mode_t) -> Int32 {
        LayerApplier.withCString(name) { Glibc.openat(dir, $0, flags, mode) }
    }
    static func mkdir(_ dir: Int32, _ name: [UInt8], _ mode: mode_t) -> Int32 { LayerApplier.withCString(name) { Glibc.mkdirat(dir, $0, mode) } }
    static func stat(_ dir: Int32, _ name: [UInt8], _ st: inout Glibc.stat, _ flags: Int32) -> Int32 {
        LayerApplier.withCString(name) { Glibc.fstatat(dir, $0, &st, flags) }
    }
    static func unlink(_ dir: Int32, _ name: [UInt8], _ flags: Int32) -> Int32 { LayerApplier.withCString(name) { Glibc.unlinkat(dir, $0, flags) } }
    static func chown(_ dir: Int32, _ name: [UInt8], _ uid: uid_t, _ gid: gid_t, _ flags: Int32) -> Int32 {
        LayerApplier.withCString(name) { Glibc.fchownat(dir, $0, uid, gid, flags) }
    }
    static func chmod(_ dir: Int32, _ name: [UInt8], _ mode: mode_t, _ flags: Int32) -> Int32 {
        LayerApplier.withCString(name) { Glibc.fchmodat(dir, $0, mode, flags) }
    }
    static func mknod(_ dir: Int32, _ name: [UInt8], _ mode: mode_t, _ dev: dev_t) -> Int32 {
        LayerApplier.withCString(name) { Glibc.mknodat(dir, $0, mode, dev) }
    }
    static func symlink(_ target: [UInt8], _ dir: Int32, _ name: [UInt8]) -> Int32 {
        LayerApplier.withCString(target) { t in LayerApplier.withCString(name) { Glibc.symlinkat(t, dir, $0) } }
    }
    static func link(_ fromDir: Int32, _ from: [UInt8], _ toDir: Int32, _ to: [UInt8], _ flags: Int32) -> Int32 {
        LayerApplier.withCString(from) { f in LayerApplier.withCString(to) { t in Glibc.linkat(fromDir, f, toDir, t, flags) } }
    }
    static func utimens(_ dir: Int32, _ name: [UInt8], _ time: timespec, _ flags: Int32) -> Int32 {
        let times = [time, time]
        return LayerApplier.withCString(name) { Glibc.utimensat(dir, $0, times, flags) }
    }
}
