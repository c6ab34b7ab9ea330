import CLinux
import Glibc

/// Path resolution that cannot leave a directory: the calls a file server needs to confine a
/// hostile client's names to one tree (openat2(2), docs/volumes.md "Confinement").
public enum Beneath {
    /// Resolution stays beneath `dirfd`: no `..` above it, no absolute paths, no symlinks
    /// (a link's target is the client's text, never followed on the host), no /proc magic links.
    public static let strict: UInt64 = UInt64(KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS | KILN_RESOLVE_NO_MAGICLINKS)
    public static let pathOnly = Int32(KILN_O_PATH)
    public static let emptyPath = Int32(KILN_AT_EMPTY_PATH)
    public static let renameNoReplace = UInt32(KILN_RENAME_NOREPLACE)
    public static let renameExchange = UInt32(KILN_RENAME_EXCHANGE)
    public static let renameWhiteout = UInt32(KILN_RENAME_WHITEOUT)

    /// openat2 of `name` beneath `dirfd`; retries EAGAIN (a concurrent rename raced the lookup) a few times.
    public static func open(_ dirfd: Int32, _ name: UnsafePointer<CChar>, flags: Int32, mode: UInt32 = 0,
                            resolve: UInt64 = Beneath.strict) throws(Errno) -> Int32 {
        var attempts = 0
        while true {
            let fd = kiln_openat2(dirfd, name, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), UInt64(mode), resolve)
            if fd >= 0 { return fd }
            let e = errno
            attempts += 1
            if e == EINTR || (e == EAGAIN && attempts < 8) { continue }
            throw Errno(e, call: "openat2")
        }
    }

    /// Reads raw `linux_dirent64` records at the descriptor's current offset; 0 at the end.
    public static func directoryEntries(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        while true {
            let n = kiln_getdents64(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw Errno.current("getdents64")
        }
    }

    public static func rename(_ olddir: Int32, _ old: UnsafePointer<CChar>, _ newdir: Int32, _ new: UnsafePointer<CChar>, flags: UInt32) throws(Errno) {
        if kiln_renameat2(olddir, old, newdir, new, flags) != 0 { throw Errno.current("renameat2") }
    }

    /// fstatfs(2) of a descriptor (O_PATH ones too).
    public struct FileSystemStats: Sendable {
        public var blocks: UInt64, free: UInt64, available: UInt64, files: UInt64, freeFiles: UInt64
        public var blockSize: UInt64, nameLength: UInt64, fragmentSize: UInt64
    }

    public static func fileSystem(_ fd: Int32) throws(Errno) -> FileSystemStats {
        var v = [UInt64](repeating: 0, count: 8)
        guard kiln_fstatfs(fd, &v) == 0 else { throw Errno.current("fstatfs") }
        return FileSystemStats(blocks: v[0], free: v[1], available: v[2], files: v[3], freeFiles: v[4],
                               blockSize: v[5], nameLength: v[6], fragmentSize: v[7])
    }
}
