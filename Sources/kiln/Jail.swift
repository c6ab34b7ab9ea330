import Glibc
import Jailer
import VMM

/// `kiln boot` as root: the options that pick the jail, and the hand-over to the supervisor.
enum JailCommand {
    static let options: Set<String> = ["jail-uid", "jail-gid"]
    static let flags: Set<String> = ["no-jail"]

    /// `args` without the jail's own options, for the VMM inside it.
    static func vmmArguments(_ args: ArraySlice<String>) -> [String] {
        var out: [String] = []
        var i = args.startIndex
        while i < args.endIndex {
            let arg = args[i]
            let name = String(arg.dropFirst(2).prefix { $0 != "=" })
            if arg.hasPrefix("--") && flags.contains(name) {
            } else if arg.hasPrefix("--") && (options.contains(name) || name == "control") { // the supervisor serves --control
                if !arg.contains("=") { i += 1 }
            } else {
                out.append(arg)
            }
            i += 1
        }
        return out
    }

    /// Runs the VM described by `config` (parsed from `args`) in a jail; returns kiln's exit status.
    static func supervise(_ args: ArraySlice<String>, parsed: Arguments, config: MachineConfig) throws(Arguments.Failure) -> Int32 {
        let options = try jailOptions(parsed, config: config)
        var vmmArgs = vmmArguments(args)
        // The VMM resolves no default images of its own: it gets the paths the supervisor found.
        if parsed.string("kernel") == nil {
            vmmArgs += ["--kernel", config.kernelPath] + (config.initrdPath.map { ["--initrd", $0] } ?? [])
        }
        return Supervisor.run(arguments: ["boot"] + vmmArgs, options: options, control: parsed.string("control"),
                              confine: { try confineSupervisor(disabled: parsed.flags.contains("no-seccomp")) })
    }

    /// `kiln restore` as root: the clone runs jailed like a booted VM, with limits from the snapshot.
    static func superviseRestore(_ args: ArraySlice<String>, parsed: Arguments, snapshot: SnapshotInfo,
                                 vsockPath: String?) throws(Arguments.Failure) -> Int32 {
        var config = snapshot.config
        if let vsockPath { config.vsock?.path = vsockPath }
        let options = try jailOptions(parsed, config: config)
        return Supervisor.run(arguments: ["restore"] + vmmArguments(args), options: options, control: parsed.string("control"),
                              confine: { try confineSupervisor(disabled: parsed.flags.contains("no-seccomp")) })
    }

    /// The jail for a VM shaped like `config`, with the user's --jail-uid/--jail-gid.
    static func jailOptions(_ parsed: Arguments, config: MachineConfig) throws(Arguments.Failure) -> JailOptions {
        var options = JailOptions(cpus: config.cpus, memoryMiB: config.memoryMiB)
        options.uid = UInt32(try parsed.int("jail-uid", default: Int(JailSpec.defaultUID)))
        options.gid = UInt32(try parsed.int("jail-gid", default: Int(options.uid)))
        guard options.uid != 0, options.gid != 0 else { throw Arguments.Failure(message: "--jail-uid and --jail-gid must not be 0") }
        options.vsockPath = config.vsock?.path
        // Overlay disks write to a layer as large as the image; plain ones to the image itself.
        let largestDisk = config.disks.filter { !$0.readOnly }.compactMap { diskSize($0.path) }.max() ?? 0
        options.fileSize = max(JailSpec.minimumFileSize, largestDisk)
        #if DEBUG
        // Tests only: a smaller memory limit than guest RAM, to watch the OOM killer end the VMM.
        if let mib = getenv("KILN_TEST_JAIL_MEMORY_MIB").flatMap({ UInt64(String(cString: $0)) }) {
            options.limits.memoryBytes = mib << 20
        }
        #endif
        return options
    }

    static func diskSize(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : nil
    }
}
