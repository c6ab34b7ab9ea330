/// What the supervisor tells the jailed VMM about its jail: part of its `VMMLaunch`.
public struct JailSpec: Sendable, Equatable {
    /// The directory the VMM's root file system is mounted on (an empty tmpfs, see docs/security.md).
    public var root: String
    public var uid: UInt32
    public var gid: UInt32
    /// RLIMIT_NOFILE: every eventfd, TAP, disk and vsock connection the VMM holds.
    public var openFiles: UInt64
    /// RLIMIT_FSIZE: no file the VMM writes (a disk, a console log) grows past this.
    public var fileSize: UInt64
    /// Whether fd 3, which carried the launch, stays the control socket to the supervisor
    /// (vsock connections to host sockets).
    public var control: Bool
    /// What fd 4 is.
    public var commands: Commands
    /// Whether the VMM outlives its supervisor: no parent-death signal (docs/security.md, "Detached sandboxes").
    public var detached: Bool

    public enum Commands: UInt8, Sendable, Equatable {
        /// No fd 4.
        case none = 0
        /// fd 4 is one end of a socket pair whose other end the supervisor holds.
        case channel = 1
        /// fd 4 is a listening SOCK_SEQPACKET socket; each connection is a command channel.
        case listener = 2
    }

    public static let defaultUID: UInt32 = 64000
    public static let defaultGID: UInt32 = 64000
    public static let defaultOpenFiles: UInt64 = 2048
    /// With virtio-fs shares: every inode the guest caches is an O_PATH descriptor (docs/volumes.md).
    public static let shareOpenFiles: UInt64 = 1 << 20
    public static let minimumFileSize: UInt64 = 1 << 30
    /// Where the launch arrives, and then the vsock broker's requests go (JailSpec.control).
    public static let controlFD: Int32 = 3
    public static let commandFD: Int32 = 4

    public init(root: String, uid: UInt32 = JailSpec.defaultUID, gid: UInt32 = JailSpec.defaultGID,
                openFiles: UInt64 = JailSpec.defaultOpenFiles, fileSize: UInt64 = JailSpec.minimumFileSize,
                control: Bool = false, commands: Commands = .none, detached: Bool = false) {
        self.root = root; self.uid = uid; self.gid = gid; self.openFiles = openFiles; self.fileSize = fileSize
        self.control = control; self.commands = commands; self.detached = detached
    }

    func encode(_ w: inout WireWriter) {
        w.string(root); w.u32(uid); w.u32(gid); w.u64(openFiles); w.u64(fileSize)
        w.bool(control); w.u8(commands.rawValue); w.bool(detached)
    }

    static func decode(_ r: inout WireReader) throws(WireError) -> JailSpec {
        let root = try r.path("jail.root")
        let uid = try r.u32("jail.uid"), gid = try r.u32("jail.gid")
        guard uid != 0, gid != 0 else { throw .invalid(field: "jail.uid", why: "the jail user must not be root") }
        let openFiles = try r.u64("jail.nofile"), fileSize = try r.u64("jail.fsize")
        let control = try r.bool("jail.control")
        let raw = try r.u8("jail.commands")
        guard let commands = Commands(rawValue: raw) else { throw .invalid(field: "jail.commands", why: "unknown kind \(raw)") }
        return JailSpec(root: root, uid: uid, gid: gid, openFiles: openFiles, fileSize: fileSize, control: control,
                        commands: commands, detached: try r.bool("jail.detached"))
    }
}
