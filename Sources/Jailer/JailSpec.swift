/// What the supervisor tells the jailed VMM about its jail, passed as one argument
/// (`key=value,...`) to the hidden `kiln __vmm` command.
public struct JailSpec: Sendable, Equatable {
    /// The directory the VMM's root file system is mounted on (an empty tmpfs, see docs/security.md).
    public var root: String
    public var uid: UInt32
    public var gid: UInt32
    /// RLIMIT_NOFILE: every eventfd, TAP, disk and vsock connection the VMM holds.
    public var openFiles: UInt64
    /// RLIMIT_FSIZE: no file the VMM writes (a disk, a console log) grows past this.
    public var fileSize: UInt64
    /// Whether fd 3 is the control socket to the supervisor (vsock connections to host sockets).
    public var control: Bool
    /// Whether fd 4 is the command channel from the supervisor (pause, resume, snapshot).
    public var commands: Bool

    public static let defaultUID: UInt32 = 64000
    public static let defaultGID: UInt32 = 64000
    public static let defaultOpenFiles: UInt64 = 2048
    public static let minimumFileSize: UInt64 = 1 << 30
    public static let controlFD: Int32 = 3
    public static let commandFD: Int32 = 4

    public init(root: String, uid: UInt32 = JailSpec.defaultUID, gid: UInt32 = JailSpec.defaultGID,
                openFiles: UInt64 = JailSpec.defaultOpenFiles, fileSize: UInt64 = JailSpec.minimumFileSize, control: Bool = false, commands: Bool = false) {
        self.root = root; self.uid = uid; self.gid = gid; self.openFiles = openFiles; self.fileSize = fileSize
        self.control = control; self.commands = commands
    }

    public var encoded: String {
        "root=\(root),uid=\(uid),gid=\(gid),nofile=\(openFiles),fsize=\(fileSize),control=\(control ? 1 : 0),commands=\(commands ? 1 : 0)"
    }

    public static func decode(_ text: String) -> JailSpec? {
        var values: [Substring: Substring] = [:]
        for item in text.split(separator: ",") {
            let kv = item.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { return nil }
            values[kv[0]] = kv[1]
        }
        guard let root = values["root"], root.hasPrefix("/"), let uid = values["uid"].flatMap({ UInt32($0) }),
              let gid = values["gid"].flatMap({ UInt32($0) }), let nofile = values["nofile"].flatMap({ UInt64($0) }),
              let fsize = values["fsize"].flatMap({ UInt64($0) }), let control = values["control"] else { return nil }
        return JailSpec(root: String(root), uid: uid, gid: gid, openFiles: nofile, fileSize: fsize, control: control == "1",
                        commands: values["commands"] == "1")
    }
}
