import Glibc
import Jailer
import VMM
import VMMProtocol

/// `kiln boot` as root: the options that pick the jail, and the hand-over to the supervisor.
enum JailCommand {
    static let options: Set<String> = ["jail-uid", "jail-gid"]
    static let flags: Set<String> = ["no-jail"]

    /// Runs the VM `launch` describes (parsed into `config`) in a jail; returns kiln's exit status.
    static func supervise(_ launch: VMMLaunch, parsed: Arguments, config: MachineConfig) throws(Arguments.Failure) -> Int32 {
        let options = try jailOptions(parsed, config: config)
        return Supervisor.run(launch, options: options, control: parsed.string("control"),
                              confine: { try confineSupervisor(disabled: parsed.flags.contains("no-seccomp")) })
    }

    /// `kiln restore` as root: the clone runs jailed like a booted VM, with limits from the snapshot.
    static func superviseRestore(_ launch: VMMLaunch, parsed: Arguments, snapshot: SnapshotInfo,
                                 vsockPath: String?) throws(Arguments.Failure) -> Int32 {
        var config = snapshot.config
        if let vsockPath { config.vsock?.path = vsockPath }
        let options = try jailOptions(parsed, config: config)
        return Supervisor.run(launch, options: options, control: parsed.string("control"),
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
