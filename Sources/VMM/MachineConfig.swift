import Boot

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
        ([cmdline] + hostProfile.kernelParameters).filter { !$0.isEmpty }.joined(separator: " ")
    }

    func validate() throws(MachineError) {
        guard (1...Loader.maxCPUs).contains(cpus) else {
            throw .config("--cpus must be between 1 and \(Loader.maxCPUs), got \(cpus)")
        }
        guard memoryMiB >= MachineConfig.minimumMemoryMiB else {
            throw .config("--memory \(memoryMiB) MiB is too little: a guest needs at least \(MachineConfig.minimumMemoryMiB) MiB")
        }
        guard memoryMiB <= MachineConfig.maximumMemoryMiB else { throw .config("--memory \(memoryMiB) MiB is more than Kiln supports") }
    }
}
