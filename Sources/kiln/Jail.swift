import ArgumentParser
import Glibc
import Jailer
import VMM
import VMMProtocol

/// `kiln boot` and `kiln restore` as root: the jail the user picked, and the hand-over to the supervisor.
enum JailCommand {
    /// The jail's user and group, checked, and what the supervisor needs besides.
    struct Settings {
        var uid: UInt32
        var gid: UInt32
        var control: String?
        var noSeccomp: Bool

        init(_ options: JailArguments, control: String?, noSeccomp: Bool) throws(ValidationError) {
            let uid = try wholeNumber(options.uid, "--jail-uid", default: Int(JailSpec.defaultUID))
            let gid = try wholeNumber(options.gid, "--jail-gid", default: uid)
            guard uid != 0, gid != 0 else { throw ValidationError("--jail-uid and --jail-gid must not be 0") }
            guard let u = UInt32(exactly: uid), let g = UInt32(exactly: gid) else {
                throw ValidationError("--jail-uid and --jail-gid take a user and group id from 1 to \(UInt32.max)")
            }
            self.uid = u
            self.gid = g
            self.control = control
            self.noSeccomp = noSeccomp
        }
    }

    /// Runs the VM `launch` describes (parsed into `config`) in a jail; returns kiln's exit status.
    static func supervise(_ launch: VMMLaunch, settings: Settings, config: MachineConfig) -> Int32 {
        Supervisor.run(launch, options: jailOptions(settings, config: config), control: settings.control,
                       confine: { try confineSupervisor(disabled: settings.noSeccomp) })
    }

    /// `kiln restore` as root: the clone runs jailed like a booted VM, with limits from the snapshot.
    static func superviseRestore(_ launch: VMMLaunch, settings: Settings, snapshot: SnapshotInfo, vsockPath: String?) -> Int32 {
        var config = snapshot.config
        if let vsockPath { config.vsock?.path = vsockPath }
        return Supervisor.run(launch, options: jailOptions(settings, config: config), control: settings.control,
                              confine: { try confineSupervisor(disabled: settings.noSeccomp) })
    }

    /// The jail for a VM shaped like `config`, with the user's --jail-uid/--jail-gid.
    static func jailOptions(_ settings: Settings, config: MachineConfig) -> JailOptions {
        var options = JailOptions(cpus: config.cpus, memoryMiB: config.memoryMiB)
        options.uid = settings.uid
        options.gid = settings.gid
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
