import ArgumentParser
import Glibc
import Jailer
import LinuxSys
import Sandbox
import VMM
import VMMProtocol

/// `kiln restore DIR [...]`: as root the clone runs in a jailed `kiln-vmm`, otherwise in this process.
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Continue a snapshot.",
        discussion: """
            Continues the guest saved in the snapshot directory DIR (made with `snapshot DIR` on a --control socket) \
            with the console on stdin/stdout, as `kiln boot` does. Guest memory is the snapshot's `memory` file \
            mapped copy-on-write: any number of clones can run from one snapshot.
            """)

    @Argument(help: ArgumentHelp("The snapshot directory.", valueName: "DIR"))
    var directory: String
    @Option(parsing: .unconditional, help: ArgumentHelp("The clone's own vsock socket (the snapshot must have a vsock device).",
                                                          valueName: "PATH"))
    var vsock: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("The clone's guest CID (default: the snapshot's).", valueName: "N"))
    var vsockCid: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("The clone's own TAP/MAC, as `kiln boot --net`.", valueName: "SPEC"))
    var net: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "The clone's limit for every disk, as `kiln run --disk-rate` (0: none; default: the snapshot's).",
        valueName: "BYTES_PER_S[,ops=N]"))
    var diskRate: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "The clone's limit for each direction of its NIC, as `kiln run --net-rate` (0: none; default: the snapshot's).",
        valueName: "BYTES_PER_S[,ops=N]"))
    var netRate: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("A control socket for this clone (pause, resume, status, snapshot DIR).",
                                                          valueName: "PATH"))
    var control: String?
    @Flag(help: "The console takes no input (its output still goes to stdout).")
    var headless = false
    @OptionGroup var jail: JailArguments
    @Flag(help: "No seccomp filters (debugging only; see docs/security.md).")
    var noSeccomp = false

    func validate() throws {
        if directory.hasPrefix("-") { throw ValidationError("kiln restore needs a snapshot DIR first, got '\(directory)'") }
    }

    func run() throws {
        var overrides = RestoreOverrides()
        if let cid = vsockCid {
            guard let n = UInt64(cid) else { throw ValidationError("--vsock-cid needs a number, got '\(cid)'") }
            overrides.vsockCID = n
        }
        overrides.vsockPath = vsock
        if let net {
            overrides.net = try SandboxSettings.parseNet(net)
        }
        if let diskRate { overrides.diskLimit = try SandboxSettings.parseRate(diskRate, .diskRate) }
        if let netRate {
            let limit = try SandboxSettings.parseRate(netRate, .netRate)
            overrides.netRxLimit = limit
            overrides.netTxLimit = limit
        }
        let settings = try JailCommand.Settings(jail, control: control, noSeccomp: noSeccomp)
        if headless { overrides.consoleInput = nil }
        overrides.seccomp = seccompMode(disabled: noSeccomp)
        if geteuid() == 0 {
            if jail.disabled {
                writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root with no jail (debugging only)\n")
            } else {
                let info: SnapshotInfo
                do { info = try SnapshotInfo.read(directory: directory) } catch { fail(error.description) }
                let launch = VMMLaunch(machine: .restore(overrides.launch(snapshot: directory)), seccomp: overrides.seccomp.rawValue,
                                       headless: overrides.consoleInput == nil)
                Glibc.exit(JailCommand.superviseRestore(launch, settings: settings, snapshot: info, vsockPath: overrides.vsockPath))
            }
        }
        let machine: Machine
        do { machine = try Machine(restoring: directory, overrides: overrides) } catch { fail(error.description) }
        Glibc.exit(runAttached(machine, control: control))
    }
}

/// Runs `machine` in this process with an optional control socket, mapping its end to the exit
/// code as `kiln boot` does.
func runAttached(_ machine: Machine, control path: String?) -> Int32 {
    var control: ControlSocket?
    if let path {
        do { control = try ControlSocket(path: path, machine: machine) } catch { fail(error.description) }
    }
    let outcome = machine.run()
    control?.close()
    switch outcome {
    case .guestShutdown, .userQuit: return 0
    case .guestPanicked: fail("the guest kernel panicked (see the console output above)")
    case .failed(let reason): fail("the VM stopped: \(reason)")
    }
}
