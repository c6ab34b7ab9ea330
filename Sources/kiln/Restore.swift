import Glibc
import Jailer
import LinuxSys
import VMM

let restoreUsage = """
    usage: kiln restore DIR [--vsock PATH] [--vsock-cid N] [--net SPEC] [--control PATH] [--headless]

    Continues the guest saved in the snapshot directory DIR (made with `snapshot DIR` on a
    --control socket) with the console on stdin/stdout, as `kiln boot` does. Guest memory is the
    snapshot's `memory` file mapped copy-on-write: any number of clones can run from one snapshot.
      --vsock PATH       the clone's own vsock socket (the snapshot must have a vsock device)
      --vsock-cid N      the clone's guest CID (default: the snapshot's)
      --net SPEC         the clone's own TAP/MAC, as `kiln boot --net`
      --control PATH     a control socket for this clone (pause, resume, status, snapshot DIR)
      --headless         the console takes no input (its output still goes to stdout)
      --jail-uid N, --jail-gid N
                         as root, the VMM runs jailed as this user and group (default 64000)
      --no-jail          as root, run the VMM unconfined (debugging only; see docs/security.md)
      --no-seccomp       no seccomp filters (debugging only; see docs/security.md)
    """

/// `kiln restore DIR [...]`; `jail` is set in the jailed VMM a root `kiln run` starts for a template.
func restore(_ args: ArraySlice<String>, jail: JailSpec? = nil) -> Int32 {
    guard let directory = args.first, !directory.hasPrefix("--") else { fail("kiln restore needs a snapshot DIR\n\(restoreUsage)", code: 2) }
    let parsed: Arguments
    var overrides = RestoreOverrides()
    do throws(Arguments.Failure) {
        parsed = try Arguments(args.dropFirst(), options: Set(["vsock", "vsock-cid", "net", "control"]).union(jail == nil ? JailCommand.options : []),
                               flags: Set(["headless", "no-seccomp"]).union(jail == nil ? JailCommand.flags : []))
        if let cid = parsed.string("vsock-cid") {
            guard let n = UInt64(cid) else { throw Arguments.Failure(message: "--vsock-cid needs a number, got '\(cid)'") }
            overrides.vsockCID = n
        }
    } catch {
        fail("\(error.message)\n\(restoreUsage)", code: 2)
    }
    overrides.vsockPath = parsed.string("vsock")
    if let spec = parsed.string("net") {
        do { overrides.net = try NetSpec.parse(spec) } catch { fail(error.description, code: 2) }
    }
    if parsed.flags.contains("headless") { overrides.consoleInput = nil }
    if jail == nil && geteuid() == 0 {
        if parsed.flags.contains("no-jail") {
            writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root with no jail (debugging only)\n")
        } else {
            let info: SnapshotInfo
            do { info = try SnapshotInfo.read(directory: directory) } catch { fail(error.description) }
            do { return try JailCommand.superviseRestore(args, parsed: parsed, snapshot: info, vsockPath: overrides.vsockPath) }
            catch { fail("\(error.message)\n\(restoreUsage)", code: 2) }
        }
    }
    overrides.seccomp = seccompMode(disabled: parsed.flags.contains("no-seccomp"))
    if let jail {
        do { try Confinement.prepare() } catch { fail(error.description) }
        if jail.control { overrides.vsockConnector = VsockBroker.connector() }
    }
    let machine: Machine
    do { machine = try Machine(restoring: directory, overrides: overrides) } catch { fail(error.description) }
    // Everything is open and mapped: lock the VMM in before the guest runs an instruction.
    if let jail {
        do { try Confinement.enter(jail) } catch { fail(error.description) }
    }
    return runAttached(machine, control: parsed.string("control"), commands: jail?.commands == true ? JailSpec.commandFD : nil)
}

/// Runs `machine` with an optional control socket (or, jailed, the supervisor's command channel
/// on the descriptor `commands`), mapping its end to the exit code as `kiln boot` does.
func runAttached(_ machine: Machine, control path: String?, commands: Int32? = nil) -> Int32 {
    var control: ControlSocket?
    if let path {
        do { control = try ControlSocket(path: path, machine: machine) } catch { fail(error.description) }
    }
    var channel: CommandChannel?
    if let commands {
        do { channel = try CommandChannel(socket: commands, machine: machine) } catch { fail(error.description) }
    }
    let outcome = machine.run()
    control?.close()
    channel?.close()
    switch outcome {
    case .guestShutdown, .userQuit: return 0
    case .guestPanicked: fail("the guest kernel panicked (see the console output above)")
    case .failed(let reason): fail("the VM stopped: \(reason)")
    }
}
