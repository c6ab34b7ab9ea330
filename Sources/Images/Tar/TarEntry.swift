/// One member of a tar archive, with its pax and GNU extended headers already applied.
public struct TarEntry: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case regular, hardLink, symbolicLink, characterDevice, blockDevice, directory, fifo
        /// A type Kiln does not unpack (GNU volume labels, multi-volume continuations, ...).
        case other(UInt8)
    }

    public var kind: Kind
    /// The path as stored: no NUL, not necessarily UTF-8, possibly hostile (`..`, leading `/`).
    public var pathBytes: [UInt8]
    /// A symbolic link's target or a hard link's linked path, as stored.
    public var linkTargetBytes: [UInt8]
    /// Bytes of data that follow the header (0 for links and directories as written by most tools).
    public var size: Int64
    /// Permission bits with setuid, setgid and sticky (07777).
    public var mode: UInt32
    public var uid: Int
    public var gid: Int
    public var userName: String
    public var groupName: String
    /// Seconds since the epoch (may be negative) and the pax fraction of a second.
    public var modificationTime: Int64
    public var modificationNanoseconds: Int32
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    /// Extended attributes from pax `SCHILY.xattr.NAME` records.
    public var xattrs: [String: [UInt8]]
    /// A GNU sparse file (old GNU type 'S' or pax GNU.sparse.*): its data is a sparse map plus the
    /// stored pieces, not the file's bytes. Kiln refuses these in layers.
    public var isSparse: Bool
    /// Where this entry's first header (extended headers included) starts in the tar stream.
    public var headerOffset: Int64

    public var path: String { String(decoding: pathBytes, as: UTF8.self) }
    public var linkTarget: String { String(decoding: linkTargetBytes, as: UTF8.self) }
}
