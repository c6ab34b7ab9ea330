import Boot
import Glibc
import Jailer
import LinuxSys
import VMM
import VMMProtocol

let usage = """
    usage: kiln run [options] -- COMMAND [ARG...]   run a command in a new sandbox (kiln run --help)
           kiln template create|list|rm ...               snapshots that kiln run starts from (kiln template --help)
           kiln image pull|import|ls|inspect|rm|prune ...  OCI images in Kiln's store (kiln image --help)
           kiln boot [options]      boot a kernel with the serial console attached
           kiln restore DIR [options]  continue a snapshot (kiln restore --help)
           kiln serve [options]     the E2B-compatible sandbox service (kiln serve --help)
           kiln help

    kiln boot options:
      --kernel PATH          kernel (vmlinux ELF or bzImage); default: Kiln's own, built on first use
      --initrd PATH          initramfs; default: Kiln's own busybox initramfs (with the default kernel)
      --cmdline STRING       kernel command line (default: "\(MachineConfig.defaultCmdline)")
      --cpus N               vCPUs (default 1)
      --memory MIB           guest memory in MiB (default 256)
      --host-profile NAME    auto, kvm or emulated-cpl0 (default auto: detected)
      --boot-protocol NAME   pvh or linux64 (default: pvh when the kernel has the note)
      --disk PATH[,ro|,overlay]
                             a raw disk image as virtio-blk (repeatable: vda, vdb, ...); with
                             overlay the guest's writes go to a private layer that is
                             discarded when the VM ends, and the image is never written
      --net tap=NAME|auto[,mac=xx:xx:xx:xx:xx:xx][,host=IP/PREFIX,guest=IP]
                             virtio-net (the guest's eth0) on a TAP interface; with host= and
                             guest=, Kiln gives the TAP the host address and the guest `ip=`
      --vsock PATH           virtio-vsock, guest CID 3: host programs connect to the Unix socket
                             PATH and write "CONNECT <port>\\n"; guest connections to CID 2
                             port P go to the Unix socket PATH_P (see docs/vsock.md)
      --share HOST,tag=TAG[,ro][,uid=N][,gid=N][,cache=none|auto|always]
                             the host directory HOST as virtio-fs (repeatable); the guest mounts it
                             with `mount -t virtiofs TAG DIR`. Files the guest creates belong to
                             uid/gid (default: HOST's owner); ro refuses every write on the host;
                             cache defaults to always with ro, auto without (docs/volumes.md)
      --control PATH         a control socket: one command per line, pause, resume, status,
                             snapshot DIR (see docs/snapshot-format.md)
      --jail-uid N, --jail-gid N
                             as root, the VMM runs jailed as this user and group (default 64000)
      --no-jail              as root, run the VMM unconfined (debugging only; see docs/security.md)
      --headless             the console takes no input (its output still goes to stdout)
      --no-seccomp           run the VMM without its seccomp filters (debugging only; see
                             docs/security.md, and KILN_SECCOMP=trap|log for gentler debugging)

    The guest's console is on stdin/stdout. Kiln exits 0 when the guest shuts down
    (e.g. `reboot -f` under reboot=k), non-zero with a reason otherwise. On a terminal,
    Ctrl-A x ends the VM.
    """

func fail(_ message: String, code: Int32 = 1) -> Never {
    writeRaw(2, "kiln: \(message)\n")
    exit(code)
}

/// Boots a VM: as root in a jailed `kiln-vmm` (JailCommand), otherwise in this process.
func boot(_ args: ArraySlice<String>) -> Int32 {
    let parsed: Arguments
    let cpus: Int, memory: Int
    do {
        let options: Set<String> = ["kernel", "initrd", "cmdline", "cpus", "memory", "host-profile", "boot-protocol", "disk", "net", "vsock", "control", "share"]
        parsed = try Arguments(args, options: options.union(JailCommand.options), flags: Set(["no-seccomp", "headless"]).union(JailCommand.flags))
        cpus = try parsed.int("cpus", default: 1)
        memory = try parsed.int("memory", default: 256)
    } catch {
        fail("\(error.message)\n\(usage)", code: 2)
    }

    let profile: HostProfile
    switch parsed.string("host-profile") ?? "auto" {
    case "auto": profile = .detect()
    case let name:
        guard let p = HostProfile(rawValue: name) else { fail("unknown host profile '\(name)' (auto, kvm, emulated-cpl0)", code: 2) }
        profile = p
    }
    var bootProtocol: BootProtocol?
    if let name = parsed.string("boot-protocol") {
        guard let p = BootProtocol(rawValue: name) else { fail("unknown boot protocol '\(name)' (pvh, linux64)", code: 2) }
        bootProtocol = p
    }

    let kernel: String, initrd: String?
    do {
        kernel = try parsed.string("kernel") ?? DefaultImages.kernel()
        // The default initramfs goes with the default kernel; a user's kernel gets only what they pass.
        initrd = try parsed.string("initrd") ?? (parsed.string("kernel") == nil ? DefaultImages.initramfs() : nil)
    } catch let error as DefaultImages.Failure {
        fail(error.message)
    } catch {
        fail("\(error)")
    }

    var disks: [MachineConfig.Disk] = []
    for spec in parsed.all("disk") {
        guard let disk = MachineConfig.Disk.parse(spec) else { fail("--disk takes PATH[,ro|,overlay], got '\(spec)'", code: 2) }
        disks.append(disk)
    }

    var shares: [MachineConfig.Share] = []
    for spec in parsed.all("share") {
        guard let share = MachineConfig.Share.parse(spec, owner: directoryOwner) else {
            fail("--share takes HOST,tag=TAG[,ro][,uid=N][,gid=N][,cache=none|auto|always] (a tag of letters, digits, '-', '_', '.'), got '\(spec)'", code: 2)
        }
        shares.append(share)
    }

    var net: NetSpec?
    if let spec = parsed.string("net") {
        do { net = try NetSpec.parse(spec) } catch { fail(error.description, code: 2) }
    }
    guard parsed.all("net").count <= 1 else { fail("--net can be given once", code: 2) }

    var config = MachineConfig(kernelPath: kernel, initrdPath: initrd,
                               cmdline: parsed.string("cmdline") ?? MachineConfig.defaultCmdline,
                               cpus: cpus, memoryMiB: memory, hostProfile: profile, bootProtocol: bootProtocol)
    config.disks = disks
    config.shares = shares
    config.net = net
    if parsed.flags.contains("headless") { config.consoleInput = nil }
    if let path = parsed.string("vsock") {
        guard !path.isEmpty else { fail("--vsock takes a socket PATH", code: 2) }
        config.vsock = MachineConfig.Vsock(path: path)
    }
    config.seccomp = seccompMode(disabled: parsed.flags.contains("no-seccomp"))
    if geteuid() == 0 {
        if parsed.flags.contains("no-jail") {
            writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root with no jail (debugging only)\n")
        } else {
            let launch = VMMLaunch(machine: .boot(config.launch), seccomp: config.seccomp.rawValue, headless: config.consoleInput == nil)
            do { return try JailCommand.supervise(launch, parsed: parsed, config: config) }
            catch { fail("\(error.message)\n\(usage)", code: 2) }
        }
    }
    let machine: Machine
    do { machine = try Machine(config) } catch { fail(error.description) }
    return runAttached(machine, control: parsed.string("control"))
}

/// The owner of a directory, the default owner of the files a guest creates in a share of it.
func directoryOwner(_ path: String) -> (uid: UInt32, gid: UInt32)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (st.st_uid, st.st_gid)
}

BootTrace.mark("process-start")
let argv = CommandLine.arguments
switch argv.count > 1 ? argv[1] : "help" {
case "boot": exit(boot(argv.dropFirst(2)))
case "template": exit(await templateCommand(argv.dropFirst(2)))
case "image": exit(await imageCommand(argv.dropFirst(2)))
case "run":
    if argv.count > 2 && (argv[2] == "--help" || argv[2] == "-h") { writeRaw(1, runUsage + "\n"); exit(0) }
    exit(await runCommand(argv.dropFirst(2)))
case "serve" where argv.count > 2 && ["--help", "-h"].contains(argv[2]): writeRaw(1, serveUsage + "\n")
case "serve": exit(await serveCommand(argv.dropFirst(2)))
case "__launcher": exit(VMMLauncher.serve()) // kiln serve's own helper (Sources/Jailer/VMMSpawner.swift)
case "restore" where argv.count > 2 && ["--help", "-h"].contains(argv[2]): writeRaw(1, restoreUsage + "\n")
case "restore": exit(restore(argv.dropFirst(2)))
case "help", "--help", "-h": writeRaw(1, usage + "\n")
default: fail("unknown command '\(argv[1])'\n\(usage)", code: 2)
}
