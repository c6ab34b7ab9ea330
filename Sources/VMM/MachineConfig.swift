import Boot
import Devices
import Seccomp

/// Everything needed to build and boot one VM.
public struct MachineConfig: Sendable {
    public var kernelPath: String
    public var initrdPath: String?
    /// The kernel command line before the host profile's parameters are appended.
    public var cmdline: String
    public var cpus: Int
    public var memoryMiB: Int
    public var hostProfile: HostProfile
    /// nil: the kernel image decides (PVH for a vmlinux with the note).
    public var bootProtocol: BootProtocol?
    /// Host file descriptors for the serial console; input nil means the guest gets no input.
    public var consoleInput: Int32?
    public var consoleOutput: Int32
    /// The most bytes the console output keeps when it is a regular file (a sandbox's
    /// console.log); 0: no cap. See `consoleRotation`.
    public var consoleLimit: UInt64 = 0
    /// Where a full console output's content moves (console.log.1) before it starts over; nil:
    /// the old content is dropped. The machine keeps a descriptor of its own.
    public var consoleRotation: Int32?
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    public var disks: [Disk] = []
    /// virtio-vsock, after the disks.
    public var vsock: Vsock?

    public struct Vsock: Sendable, Equatable {
        /// The Unix socket Kiln listens on; guest connections to port P go to `path_P`.
        public var path: String
        public var guestCID: UInt64
        public static let defaultGuestCID: UInt64 = 3
        public init(path: String, guestCID: UInt64 = Vsock.defaultGuestCID) { self.path = path; self.guestCID = guestCID }
    }
    /// Opens guest vsock connections to host ports instead of connecting to `path_P` (set by
    /// the jailed VMM, which reaches host sockets only through its supervisor).
    public var vsockConnector: VirtioVsock.Connector?
    /// A virtio-net device on a TAP interface (eth0 in the guest).
    public var net: NetSpec?
    /// virtio-fs shares, after every other device (docs/volumes.md).
    public var shares: [Share] = []
    /// Seccomp filters on every VMM thread (Security/seccomp); `.off` only for debugging.
    public var seccomp: SeccompMode = .kill

    public struct Disk: Sendable, Equatable {
        public var path: String
        public var readOnly: Bool
        /// The guest may write, but writes go to a private layer discarded with the VM; the
        /// image itself is opened read-only.
        public var overlay: Bool
        /// The disk's rate limit (docs/net.md, "Rate limits").
        public var limit: RateLimit
        public init(path: String, readOnly: Bool = false, overlay: Bool = false, limit: RateLimit = .unlimited) {
            self.path = path; self.readOnly = readOnly; self.overlay = overlay; self.limit = limit
        }

        /// Parses `PATH[,ro|,overlay][,rate=BYTES_PER_S][,ops=N][,burst=BYTES][,ops-burst=N]`.
        public static func parse(_ spec: String) -> Disk? {
            var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard let path = parts.first, !path.isEmpty else { return nil }
            parts.removeFirst()
            var disk = Disk(path: path)
            var rate = RateLimitOptions()
            for option in parts {
                let kv = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                switch option {
                case "ro": disk.readOnly = true
                case "rw": disk.readOnly = false
                case "overlay": disk.overlay = true
                default:
                    guard kv.count == 2, RateLimitOptions.keys.contains(kv[0]), rate.take(kv[0], kv[1]) else { return nil }
                }
            }
            guard let limit = rate.limit else { return nil }
            disk.limit = limit
            return disk.readOnly && disk.overlay ? nil : disk
        }

        /// The `--disk` text that parses back to this disk.
        var specString: String {
            ([path] + (readOnly ? ["ro"] : []) + (overlay ? ["overlay"] : []) + limit.specOptions).joined(separator: ",")
        }
    }

    /// A host directory the guest mounts with `mount -t virtiofs TAG DIR`, or (path nil) a spare
    /// slot that a restore binds (docs/volumes.md, "Templates").
    public struct Share: Sendable, Equatable {
        public var tag: String
        public var path: String?
        public var options: ShareOptions
        public init(tag: String, path: String?, options: ShareOptions) { self.tag = tag; self.path = path; self.options = options }

        /// The tags of the spare slots every template carries, for `kiln run -v`.
        public static let spareTags = (0..<4).map { "kiln\($0)" }

        /// Parses `HOST,tag=T[,ro][,uid=N][,gid=N][,cache=none|auto|always]`. The owner defaults to
        /// the directory's own (`owner(path)`).
        public static func parse(_ spec: String, owner: (String) -> (uid: UInt32, gid: UInt32)?) -> Share? {
            var parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard let path = parts.first, !path.isEmpty else { return nil }
            parts.removeFirst()
            var tag: String?, readOnly = false, uid: UInt32?, gid: UInt32?, cache: ShareOptions.Cache?
            for option in parts {
                let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
                switch (kv[0], kv.count == 2 ? kv[1] : nil) {
                case ("ro", nil): readOnly = true
                case ("rw", nil): readOnly = false
                case ("tag", let v?): tag = v
                case ("uid", let v?): guard let n = UInt32(v) else { return nil }; uid = n
                case ("gid", let v?): guard let n = UInt32(v) else { return nil }; gid = n
                case ("cache", let v?): guard let c = ShareOptions.Cache(rawValue: v) else { return nil }; cache = c
                default: return nil
                }
            }
            guard let tag, VirtioFS.isValidTag(tag) else { return nil }
            let dflt = owner(path)
            guard let u = uid ?? dflt?.uid, let g = gid ?? dflt?.gid else { return nil }
            return Share(tag: tag, path: path, options: ShareOptions(readOnly: readOnly, uid: u, gid: g, cache: cache))
        }
    }

    public static let defaultCmdline = "console=ttyS0 reboot=k panic=-1"
    public static let minimumMemoryMiB = 32
    public static let maximumMemoryMiB = 1 << 20

    public init(kernelPath: String, initrdPath: String? = nil, cmdline: String = MachineConfig.defaultCmdline,
                cpus: Int = 1, memoryMiB: Int = 256, hostProfile: HostProfile = .detect(),
                bootProtocol: BootProtocol? = nil, consoleInput: Int32? = 0, consoleOutput: Int32 = 1) {
        self.kernelPath = kernelPath; self.initrdPath = initrdPath; self.cmdline = cmdline
        self.cpus = cpus; self.memoryMiB = memoryMiB; self.hostProfile = hostProfile
        self.bootProtocol = bootProtocol; self.consoleInput = consoleInput; self.consoleOutput = consoleOutput
    }

    /// The command line the guest receives: the user's plus what the host profile needs.
    public var effectiveCmdline: String {
        ([cmdline] + hostProfile.kernelParameters + virtioDeclarations + [net?.kernelParameter ?? ""]).filter { !$0.isEmpty }.joined(separator: " ")
    }

    /// Where virtio device `index` lives: its MMIO window and IRQ line.
    public static func virtioSlot(_ index: Int) -> (base: UInt64, irq: UInt32) {
        (Layout.virtioMMIOBase + UInt64(index) * Layout.virtioMMIOWindow, Layout.virtioFirstIRQ + UInt32(index))
    }

    /// Every virtio device in slot order: disks first (vda, vdb, ...), then the others.
    public var virtioDevices: [VirtioDeviceSpec] {
        disks.map { .block($0) } + (net.map { [.net($0)] } ?? []) + (vsock.map { [.vsock(path: $0.path, cid: $0.guestCID)] } ?? [])
            + shares.map { .fs($0) }
    }

    /// virtio-mmio devices are declared to the guest on its command line (no ACPI, no device tree).
    var virtioDeclarations: [String] {
        virtioDevices.indices.map { i in
            let slot = MachineConfig.virtioSlot(i)
            return "virtio_mmio.device=4K@0x\(String(slot.base, radix: 16)):\(slot.irq)"
        }
    }

    func validate() throws(MachineError) {
        guard (1...Loader.maxCPUs).contains(cpus) else {
            throw .config("--cpus must be between 1 and \(Loader.maxCPUs), got \(cpus)")
        }
        guard memoryMiB >= MachineConfig.minimumMemoryMiB else {
            throw .config("--memory \(memoryMiB) MiB is too little: a guest needs at least \(MachineConfig.minimumMemoryMiB) MiB")
        }
        guard virtioDevices.count <= Layout.maxVirtioDevices else { throw .config("at most \(Layout.maxVirtioDevices) virtio devices") }
        guard Set(shares.map(\.tag)).count == shares.count else { throw .config("two shares with the same tag") }
        for share in shares where !VirtioFS.isValidTag(share.tag) { throw .config("share tag '\(share.tag)' is not valid") }
        guard memoryMiB <= MachineConfig.maximumMemoryMiB else { throw .config("--memory \(memoryMiB) MiB is more than Kiln supports") }
    }
}
