import ArgumentParser
import Boot
import Glibc
import Jailer
import LinuxSys
import Sandbox
import VMM
import VMMProtocol

func fail(_ message: String, code: Int32 = 1) -> Never {
    writeRaw(2, "kiln: \(message)\n")
    exit(code)
}

/// `kiln boot`: boots a VM with the serial console attached; as root in a jailed `kiln-vmm`
/// (JailCommand), otherwise in this process.
struct BootCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot a kernel with the serial console attached.",
        discussion: """
            The guest's console is on stdin/stdout. Kiln exits 0 when the guest shuts down (e.g. `reboot -f` \
            under reboot=k), non-zero with a reason otherwise. On a terminal, Ctrl-A x ends the VM.
            """)

    @OptionGroup var machine: MachineOptions
    @Option(parsing: .unconditional, help: ArgumentHelp("Initramfs; default: Kiln's own busybox initramfs (with the default kernel).",
                                                          valueName: "PATH"))
    var initrd: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Kernel command line (default: \"\(MachineConfig.defaultCmdline)\").",
                                                          valueName: "STRING"))
    var cmdline: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("auto, kvm or emulated-cpl0 (default auto: detected).", valueName: "NAME"))
    var hostProfile: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("pvh or linux64 (default: pvh when the kernel has the note).", valueName: "NAME"))
    var bootProtocol: String?
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        A raw disk image as virtio-blk (repeatable: vda, vdb, ...); with overlay the guest's writes go to a private \
        layer that is discarded when the VM ends, and the image is never written. rate= and ops= limit it to \
        BYTES_PER_S and N requests a second (burst=, ops-burst=: a one-time extra; docs/net.md, "Rate limits").
        """, valueName: "PATH[,ro|,overlay][,rate=BYTES_PER_S][,ops=N]"))
    var disk: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        virtio-net (the guest's eth0) on a TAP interface; with host= and guest=, Kiln gives the TAP the host \
        address and the guest `ip=`. rate= and ops= limit each direction (rx-rate=, tx-ops=, ...: one).
        """, valueName: "tap=NAME|auto[,mac=xx:xx:xx:xx:xx:xx][,host=IP/PREFIX,guest=IP][,rate=BYTES_PER_S]"))
    var net: [String] = []
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        virtio-vsock, guest CID 3: host programs connect to the Unix socket PATH and write "CONNECT <port>\\n"; \
        guest connections to CID 2 port P go to the Unix socket PATH_P (docs/vsock.md).
        """, valueName: "PATH"))
    var vsock: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        A control socket: one command per line, pause, resume, status, snapshot DIR (docs/snapshot-format.md).
        """, valueName: "PATH"))
    var control: String?
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        The host directory HOST as virtio-fs (repeatable); the guest mounts it with `mount -t virtiofs TAG DIR`. \
        Files the guest creates belong to uid/gid (default: HOST's owner); ro refuses every write on the host; \
        cache defaults to always with ro, auto without (docs/volumes.md).
        """, valueName: "HOST,tag=TAG[,ro][,uid=N][,gid=N][,cache=none|auto|always]"))
    var share: [String] = []
    @OptionGroup var jail: JailArguments
    @Flag(help: "The console takes no input (its output still goes to stdout).")
    var headless = false
    @Flag(help: "Run the VMM without its seccomp filters (debugging only; docs/security.md, and KILN_SECCOMP=trap|log).")
    var noSeccomp = false

    /// Every value checked before any work (issue 14): the machine, the files, the devices.
    func checkedSettings() throws -> SandboxSettings {
        var settings = SandboxSettings()
        try machine.apply(to: &settings)
        settings.initrd = initrd
        settings.disks = try disk.map { spec throws(SettingError) in try SandboxSettings.parseDisk(spec) }
        guard net.count <= 1 else { throw ValidationError("--net can be given once") }
        settings.net = try net.first.map { spec throws(SettingError) in try SandboxSettings.parseNet(spec) }
        try settings.validate()
        return settings
    }

    func validate() throws { _ = try checkedSettings(); _ = try shares() }

    /// The --share values, each checked.
    func shares() throws -> [MachineConfig.Share] {
        var shares: [MachineConfig.Share] = []
        for spec in share {
            guard let s = MachineConfig.Share.parse(spec, owner: directoryOwner) else {
                throw ValidationError("--share takes HOST,tag=TAG[,ro][,uid=N][,gid=N][,cache=none|auto|always] (a tag of letters, digits, '-', '_', '.'), got '\(spec)'")
            }
            shares.append(s)
        }
        return shares
    }

    func run() throws {
        let settings = try checkedSettings()
        let profile: HostProfile
        switch hostProfile ?? "auto" {
        case "auto": profile = .detect()
        case let name:
            guard let p = HostProfile(rawValue: name) else { throw ValidationError("unknown host profile '\(name)' (auto, kvm, emulated-cpl0)") }
            profile = p
        }
        var protocolChoice: BootProtocol?
        if let name = bootProtocol {
            guard let p = BootProtocol(rawValue: name) else { throw ValidationError("unknown boot protocol '\(name)' (pvh, linux64)") }
            protocolChoice = p
        }
        if let vsock, vsock.isEmpty { throw ValidationError("--vsock takes a socket PATH") }
        let jailSettings = try JailCommand.Settings(jail, control: control, noSeccomp: noSeccomp)

        let kernel: String, initrdPath: String?
        do {
            kernel = try machine.kernel ?? DefaultImages.kernel()
            // The default initramfs goes with the default kernel; a user's kernel gets only what they pass.
            initrdPath = try initrd ?? (machine.kernel == nil ? DefaultImages.initramfs() : nil)
        } catch let error as DefaultImages.Failure {
            fail(error.message)
        } catch {
            fail("\(error)")
        }

        var config = MachineConfig(kernelPath: kernel, initrdPath: initrdPath, cmdline: cmdline ?? MachineConfig.defaultCmdline,
                                   cpus: settings.cpus, memoryMiB: settings.memoryMiB, hostProfile: profile, bootProtocol: protocolChoice)
        config.disks = settings.disks
        config.net = settings.net
        config.shares = try shares()
        if headless { config.consoleInput = nil }
        if let vsock { config.vsock = MachineConfig.Vsock(path: vsock) }
        config.seccomp = seccompMode(disabled: noSeccomp)
        if geteuid() == 0 {
            if jail.disabled {
                writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root with no jail (debugging only)\n")
            } else {
                let launch = VMMLaunch(machine: .boot(config.launch), seccomp: config.seccomp.rawValue, headless: config.consoleInput == nil)
                Glibc.exit(JailCommand.supervise(launch, settings: jailSettings, config: config))
            }
        }
        let vm: Machine
        do { vm = try Machine(config) } catch { fail(error.description) }
        Glibc.exit(runAttached(vm, control: control))
    }
}

BootTrace.mark("process-start")

/// Help asked for goes to stdout (exit 0); any other parse or usage error is one line on
/// stderr and exit 2, never the help text after it.
func exitForParseError(_ error: any Error) -> Never {
    if let code = error as? ExitCode { exit(code.rawValue) }
    if Kiln.exitCode(for: error) == .success {
        writeRaw(1, Kiln.fullMessage(for: error) + "\n")
        exit(0)
    }
    let message = Kiln.message(for: error)
    fail(String(message.split(separator: "\n").first ?? Substring(message)), code: 2)
}

/// Runs the parsed command; the commands exit themselves, or throw a usage error.
func start(_ command: any ParsableCommand) async throws {
    if var asyncCommand = command as? any AsyncParsableCommand {
        try await asyncCommand.run()
    } else {
        var command = command
        try command.run()
    }
}

var command: any ParsableCommand
do { command = try Kiln.parseAsRoot(Array(CommandLine.arguments.dropFirst())) } catch { exitForParseError(error) }
if !(command is any AsyncParsableCommand) {
    // Synchronous commands (boot, restore, the launcher) run here on the main thread, before
    // anything starts Swift Concurrency's threads: the jail's supervisor takes SIGTERM and SIGINT
    // through a signalfd, blocked only in its own thread, and a pool thread without the block
    // would take the signal's default action and kill kiln before it cleans up.
    do { try command.run() } catch { exitForParseError(error) }
    exit(0)
}
do { try await start(command) } catch { exitForParseError(error) }

/// The owner of a directory, the default owner of the files a guest creates in a share of it.
func directoryOwner(_ path: String) -> (uid: UInt32, gid: UInt32)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (st.st_uid, st.st_gid)
}
