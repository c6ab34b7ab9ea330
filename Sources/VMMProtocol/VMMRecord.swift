/// What a detached sandbox leaves in its runtime directory so that another process can find,
/// verify, reach and finally remove its VMM (docs/security.md, "Detached sandboxes"). Written
/// atomically (a temporary file renamed into place) before the VMM is let run.
public struct VMMRecord: Sendable, Equatable {
    /// The VMM's process id in the host's PID namespace.
    public var pid: Int32
    /// Its start time (/proc/PID/stat field 22, clock ticks after boot) and the host's boot id:
    /// with the pid they name one process, so a reused pid is never taken for the VMM.
    public var startTime: UInt64
    public var bootID: String
    /// The jail directory (`/run/kiln/jail/ID`).
    public var jailDirectory: String
    /// The cgroup leaf directories (one on cgroup v2; memory, cpu, pids on v1 hosts).
    public var cgroups: [String]
    public var cgroupV2: Bool
    /// The vsock Unix socket (host-initiated connections: `CONNECT <port>`).
    public var vsockPath: String
    /// The listening SOCK_SEQPACKET socket the VMM serves commands on (pause, snapshot, ...).
    public var commandSocket: String

    public init(pid: Int32, startTime: UInt64, bootID: String, jailDirectory: String, cgroups: [String], cgroupV2: Bool,
                vsockPath: String, commandSocket: String) {
        self.pid = pid; self.startTime = startTime; self.bootID = bootID; self.jailDirectory = jailDirectory
        self.cgroups = cgroups; self.cgroupV2 = cgroupV2; self.vsockPath = vsockPath; self.commandSocket = commandSocket
    }

    /// "KSBR" and the format version.
    static let magic: [UInt8] = [0x4B, 0x53, 0x42, 0x52, 1]

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.raw(Self.magic)
        w.u32(UInt32(bitPattern: pid)); w.u64(startTime); w.string(bootID)
        w.string(jailDirectory); w.array(cgroups) { $0.string($1) }; w.bool(cgroupV2)
        w.string(vsockPath); w.string(commandSocket)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(WireError) -> VMMRecord {
        var r = WireReader(bytes)
        try r.expect(magic: magic, format: "Kiln sandbox record (version 1)")
        let pid = Int32(bitPattern: try r.u32("pid"))
        guard pid > 1 else { throw .invalid(field: "pid", why: "\(pid)") }
        let startTime = try r.u64("startTime")
        let bootID = try r.string("bootID")
        let jail = try r.path("jailDirectory")
        let cgroups = try r.array("cgroups", max: 8) { (r: inout WireReader) throws(WireError) in try r.path("cgroup") }
        let v2 = try r.bool("cgroupV2")
        let vsock = try r.path("vsockPath"), commands = try r.path("commandSocket")
        // Paths the reaper removes: none may climb out of where it claims to be.
        for p in [jail, vsock, commands] + cgroups where p.split(separator: "/").contains("..") {
            throw .invalid(field: "path", why: "'\(p)' contains ..")
        }
        try r.finish()
        return VMMRecord(pid: pid, startTime: startTime, bootID: bootID, jailDirectory: jail, cgroups: cgroups, cgroupV2: v2,
                         vsockPath: vsock, commandSocket: commands)
    }
}
