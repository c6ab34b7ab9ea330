import ArgumentParser
import Glibc
import Jailer
import LinuxSys
import Sandbox
import VMM

/// The `kiln` command tree. Parsing, help and usage come from swift-argument-parser; every
/// command's `run` does the work. main.swift turns any parse error into one line and exit 2.
struct Kiln: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Sandbox microVMs for untrusted jobs.",
        discussion: "`kiln run -- CMD` boots a sandbox, runs CMD in it and removes it. See README.md and docs/.",
        subcommands: [RunCommand.self, TemplateCommand.self, ImageStoreCommand.self, BootCommand.self, RestoreCommand.self,
                      ServeCommand.self, LauncherCommand.self])
}

// MARK: - Option groups shared by several commands

/// The machine every command that starts a VM sizes: `kiln run`, `kiln template create`, `kiln boot`.
struct MachineOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp("Guest kernel (vmlinux ELF or bzImage); default: Kiln's own, built on first use.",
                                                          valueName: "PATH"))
    var kernel: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("vCPUs (default 1).", valueName: "N"))
    var cpus: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("Guest memory in MiB (default 256).", valueName: "MiB"))
    var memory: String?
}

/// Where OCI images are pulled from: `kiln run`, `kiln template create`, `kiln image pull`.
struct RegistryOptions: ParsableArguments {
    @Option(parsing: .unconditional,
            help: ArgumentHelp("Credentials for pulling: a Docker config.json (default $DOCKER_CONFIG/config.json, else ~/.docker/config.json).",
                               valueName: "FILE"))
    var registryAuth: String?

    @Option(parsing: .unconditionalSingleValue,
            help: ArgumentHelp("Pull from this host over plain HTTP (repeatable; loopback hosts always are).", valueName: "HOST[:PORT]"))
    var insecureRegistry: [String] = []
}

/// A sandbox: its root filesystem and machine, for `kiln run` and `kiln template create`.
/// Options every sandbox takes belong here, so that both commands get them.
struct SandboxOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        The root filesystem: `default` (Kiln's busybox image), `debian`, a NAME.ext4 in the image cache, \
        a disk file PATH, or an OCI image REF ([HOST[:PORT]/]NAME[:TAG][@DIGEST]), pulled and made into a root disk \
        on first use (docs/images.md).
        """, valueName: "IMAGE"))
    var image: String?

    @OptionGroup var machine: MachineOptions

    @Option(parsing: .unconditional, help: ArgumentHelp("Give up when the sandbox is not ready after this long (default 300).",
                                                          valueName: "SECONDS"))
    var bootTimeout: String?

    @OptionGroup var registry: RegistryOptions

    // Internal (docs/images.md, "Booting an image"): any ext4 root disk through Kiln's agent
    // disk, and an OCI image configuration applied to the command.
    @Option(parsing: .unconditional, help: .hidden) var rootDisk: String?
    @Option(parsing: .unconditional, help: .hidden) var imageConfig: String?

    func validate() throws {
        if rootDisk != nil && image != nil { throw ValidationError("--root-disk and --image name two root filesystems: give one") }
    }

    var pull: RootImage.PullSettings {
        var settings = RootImage.PullSettings(registryAuth: registry.registryAuth)
        settings.insecureRegistries = registry.insecureRegistry
        return settings
    }
}

/// The jail of `kiln boot` and `kiln restore` as root.
struct JailArguments: ParsableArguments {
    @Option(name: .customLong("jail-uid"), parsing: .unconditional,
            help: ArgumentHelp("As root, the VMM runs jailed as this user (default 64000).", valueName: "N"))
    var uid: String?

    @Option(name: .customLong("jail-gid"), parsing: .unconditional,
            help: ArgumentHelp("As root, the VMM runs jailed as this group (default: the jail's uid).", valueName: "N"))
    var gid: String?

    @Flag(name: .customLong("no-jail"), help: "As root, run the VMM unconfined (debugging only; see docs/security.md).")
    var disabled = false
}

// MARK: - Values, checked by SandboxSettings (Sources/Sandbox/Settings.swift) as the service's are

extension MachineOptions {
    /// The machine's settings, each value checked.
    func apply(to settings: inout SandboxSettings) throws(SettingError) {
        if let cpus { settings.cpus = try SandboxSettings.parseInt(cpus, .cpus, in: SandboxSettings.cpuRange) }
        if let memory { settings.memoryMiB = try SandboxSettings.parseInt(memory, .memory, in: SandboxSettings.memoryRange) }
        settings.kernel = kernel
    }
}

extension SandboxOptions {
    /// The sandbox's settings, checked (not yet validated as a whole: the command adds its own).
    func settings() throws(SettingError) -> SandboxSettings {
        var settings = SandboxSettings()
        try machine.apply(to: &settings)
        if let bootTimeout { settings.bootTimeout = try SandboxSettings.parseSeconds(bootTimeout, .bootTimeout) }
        settings.image = image
        settings.rootDisk = rootDisk
        return settings
    }
}

/// A whole-number option, or its default when not given.
func wholeNumber(_ text: String?, _ option: String, default value: Int) throws(ValidationError) -> Int {
    guard let text else { return value }
    guard let n = Int(text) else { throw ValidationError("\(option) needs a whole number, got '\(text)'") }
    return n
}

/// A command group without its subcommand: one line, as for any usage error.
func missingSubcommand(_ command: String, _ verbs: String) -> Never {
    fail("kiln \(command) needs a command: \(verbs) (kiln \(command) --help)", code: 2)
}

/// Hidden: kiln serve's own helper that starts jailed VMMs for it (Sources/Jailer/VMMSpawner.swift).
struct LauncherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "__launcher", shouldDisplay: false)

    func run() { Glibc.exit(VMMLauncher.serve(other: { LauncherNetworks.answer($0) })) }
}
