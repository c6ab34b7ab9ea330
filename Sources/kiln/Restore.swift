import Glibc
import Jailer
import LinuxSys
import VMM
import VMMProtocol

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

/// `kiln restore DIR [...]`: as root the clone runs in a jailed `kiln-vmm`, otherwise in this process.
func restore(_ args: ArraySlice<String>) -> Int32 {
    guard let directory = args.first, !directory.hasPrefix("--") else { fail("kiln restore needs a snapshot DIR\n\(restoreUsage)", code: 2) }
    let parsed: Arguments
    var overrides = RestoreOverrides()
    do throws(Arguments.Failure) {
        parsed = try Arguments(args.dropFirst(), options: Set(["vsock", "vsock-cid", "net", "control"]).union(JailCommand.options),
                               flags: Set(["headless", "no-seccomp"]).union(JailCommand.flags))
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
    overrides.seccomp = seccompMode(disabled: parsed.flags.contains("no-seccomp"))
    if geteuid() == 0 {
        if parsed.flags.contains("no-jail") {
            writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root with no jail (debugging only)\n")
        } else {
            let info: SnapshotInfo
            do { info = try SnapshotInfo.read(directory: directory) } catch { fail(error.description) }
            let launch = VMMLaunch(machine: .restore(overrides.launch(snapshot: directory)), seccomp: overrides.seccomp.rawValue,
                                   headless: overrides.consoleInput == nil)
            do { return try JailCommand.superviseRestore(launch, parsed: parsed, snapshot: info, vsockPath: overrides.vsockPath) }
            catch { fail("\(error.message)\n\(restoreUsage)", code: 2) }
        }
    }
    let machine: Machine
    do { machine = try Machine(restoring: directory, overrides: overrides) } catch { fail(error.description) }
    return runAttached(machine, control: parsed.string("control"))
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
