// kiln-vmm: the jailed VMM process (docs/security.md, "Jailer"). It takes no arguments: its
// supervisor (`kiln`, or a program using the Sandbox library) sends one VMMLaunch as the first
// message on fd 3, then it opens what the VM needs, enters the jail and runs the VM, serving the
// supervisor's commands on fd 4. A small executable of its own, so that nothing the CLI links
// (argument parsing, a network stack) is mapped into the process a guest could reach.
import CLinux
import Glibc
import Jailer
import LinuxSys
import Seccomp
import VMM
import VMMProtocol

func fail(_ message: String, code: Int32 = 1) -> Never {
    writeRaw(2, "kiln: \(message)\n")
    exit(code)
}

BootTrace.mark("process-start")
let message: (bytes: [UInt8], descriptors: [Int32])
do { message = try UnixSocket.receiveMessage(JailSpec.controlFD, capacity: VMMLaunch.maxEncodedSize) } catch {
    fail("kiln-vmm is started by kiln (its launch configuration comes on fd 3): \(error)", code: 2)
}
let launch: VMMLaunch
do { launch = try VMMLaunch.decode(message.bytes) } catch { fail("kiln-vmm: bad launch configuration: \(error)", code: 2) }
guard let jail = launch.jail else { fail("kiln-vmm runs only jailed (the launch has no jail)", code: 2) }
if !jail.control { close(JailSpec.controlFD) }

do { try Confinement.prepare() } catch { fail(error.description) }
// A sandbox network's TAP lives in that sandbox's namespace: join it to open the TAP (by name,
// in the current namespace); the jail then leaves the VMM in an empty one of its own.
let netns: String?
switch launch.machine {
case .boot(let b): netns = b.net?.netns
case .restore(let r): netns = r.net?.netns
}
if let netns {
    let fd = open(netns, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { fail("cannot open the sandbox's network namespace \(netns): \(Errno.current("open"))") }
    guard kiln_setns_net(fd) == 0 else { fail("cannot join the network namespace \(netns): \(Errno.current("setns"))") }
    close(fd)
}
let machine: Machine
do throws(MachineError) {
    let seccomp = try SeccompMode(launch: launch.seccomp)
    let connector = jail.control ? VsockBroker.connector() : nil
    switch launch.machine {
    case .boot(let boot):
        var config = try MachineConfig(launch: boot, headless: launch.headless)
        config.seccomp = seccomp
        config.vsockConnector = connector
        config.consoleLimit = launch.consoleLimit
        config.consoleRotation = launch.consoleRotation
        machine = try Machine(config)
    case .restore(let restore):
        var overrides = try RestoreOverrides(launch: restore, headless: launch.headless)
        overrides.seccomp = seccomp
        overrides.vsockConnector = connector
        overrides.consoleLimit = launch.consoleLimit
        overrides.consoleRotation = launch.consoleRotation
        machine = try Machine(restoring: restore.snapshot, overrides: overrides)
    }
} catch {
    fail(error.description)
}
// Building the machine (a restore above all: the state decoded, the write layer copied through a
// 1 MiB buffer) leaves freed heap behind that glibc keeps, and that stays resident in every
// sandbox for its whole life: hand it back while the policy still allows madvise and brk.
_ = kiln_malloc_trim()
// Everything the VM needs is open: lock the VMM in before the guest runs an instruction.
do { try Confinement.enter(jail) } catch { fail(error.description) }
var channel: CommandChannel?
if jail.commands != .none {
    do { channel = try CommandChannel(socket: JailSpec.commandFD, listening: jail.commands == .listener, machine: machine) }
    catch { fail(error.description) }
}
let outcome = machine.run()
channel?.close()
switch outcome {
case .guestShutdown, .userQuit: exit(0)
case .guestPanicked: fail("the guest kernel panicked (see the console output above)")
case .failed(let reason): fail("the VM stopped: \(reason)")
}
