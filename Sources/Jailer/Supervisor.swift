import CLinux
import CSandbox
import Glibc
import LinuxSys
import VMMProtocol

/// How `kiln boot` run as root confines one VM (see docs/security.md, "Jailer").
public struct JailOptions: Sendable {
    public var uid: UInt32 = JailSpec.defaultUID
    public var gid: UInt32 = JailSpec.defaultGID
    public var limits: CgroupLimits
    public var fileSize: UInt64 = JailSpec.minimumFileSize
    /// The vsock Unix socket the VMM listens on: removed at the end, and the base of the
    /// `PATH_P` sockets the supervisor connects to for the guest.
    public var vsockPath: String?
    /// Whether the supervisor gets a command channel to the VMM (pause, resume, snapshot).
    public var commands = false
    /// The VMM executable (`kiln-vmm`); by default the one `VMMExecutable.locate` finds.
    public var executable = VMMExecutable.locate() ?? "kiln-vmm"
    /// The VMM outlives this process (no parent-death signal, a session of its own). It then
    /// needs `commandSocket` (where it accepts command connections, the creator's included)
    /// and, to be adopted, `recordPath` (where its `VMMRecord` is written) and `vsockPath`.
    public var detached = false
    public var commandSocket: String?
    public var recordPath: String?

    /// What the VMM itself may use beyond guest RAM: its code, heap, thread stacks, KVM's
    /// page tables and the kernel image's page cache.
    public static let vmmOverheadMiB: UInt64 = 128

    /// Limits for a VM with `cpus` vCPUs and `memoryMiB` of guest RAM.
    public init(cpus: Int, memoryMiB: Int) {
        limits = CgroupLimits(memoryBytes: (UInt64(memoryMiB) + JailOptions.vmmOverheadMiB) << 20,
                              cpuQuotaMicros: (cpus + 1) * CgroupLimits.cpuPeriodMicros,
                              pids: 16 + cpus)
    }
}

/// The supervisor: the `kiln` process the user started. It creates the VM's jail directory and
/// cgroup, starts the VMM (this executable's hidden `__vmm` command) in new namespaces, serves
/// its requests for host sockets, waits for it, and removes everything when it ends, however
/// it ends. Entries left by a supervisor that was itself SIGKILLed are swept at the next start.
/// Where the VMM executable is: `$KILN_VMM`, else `kiln-vmm` beside this executable (kiln, or a
/// test runner in the same build directory).
public enum VMMExecutable {
    public static func locate() -> String? {
        if let p = getenv("KILN_VMM"), p.pointee != 0 { return String(cString: p) }
        return executableBesideSelf("kiln-vmm")
    }
}

public enum Supervisor {
    public static let jailBase = "/run/kiln/jail"

    /// Runs the VMM jailed as `launch` says and returns kiln's exit status.
    /// `confine` runs once the VMM has started (kiln installs its supervisor seccomp filter there).
    /// With `control`, the supervisor serves a control socket at that path (SupervisorControl).
    public static func run(_ launch: VMMLaunch, options: JailOptions, control: String? = nil,
                           confine: () throws -> Void = {}) -> Int32 {
        let signals = [SIGINT, SIGTERM, SIGHUP, SIGQUIT].withUnsafeBufferPointer { kiln_signalfd($0.baseAddress, Int32($0.count)) }
        guard signals >= 0 else { return fail("signalfd: \(Errno.current("signalfd"))") }
        defer { close(signals) }
        let vmm: JailedVMM
        var options = options
        options.commands = options.commands || control != nil
        do { vmm = try JailedVMM.start(launch, options: options) } catch { return fail(error.description) }
        var controlSocket: SupervisorControl?
        do {
            if let control { controlSocket = try SupervisorControl(path: control, vmm: vmm) }
            try confine()
        } catch {
            controlSocket?.close()
            vmm.kill()
            _ = vmm.wait()
            return fail("\(error)")
        }
        defer { controlSocket?.close() }

        // The VMM puts a terminal console in raw mode; a VMM that is killed cannot put it back.
        var terminal = termios()
        let onTerminal = isatty(0) == 1 && tcgetattr(0, &terminal) == 0
        defer { if onTerminal { tcsetattr(0, TCSANOW, &terminal) } }
        var stoppedBy: Int32?
        let ending = vmm.wait(interrupt: signals) {
            let signal = kiln_signalfd_read(signals)
            if signal > 0 && stoppedBy == nil { stoppedBy = signal; vmm.kill() }
        }
        if let stoppedBy {
            writeRaw(2, "kiln: stopped by signal \(stoppedBy); the VM was killed\n")
            return 128 + stoppedBy
        }
        switch ending {
        case .exited(let code): return code
        case .endedElsewhere: return 1 // only an adopted VMM, never one this started
        case .signaled(let signal, let outOfMemory):
            // A VMM killed by signal N ends kiln with 128+N, as if kiln itself had been (the shell's
            // convention), with the reason on stderr.
            if outOfMemory {
                _ = fail("the VM was stopped: its VMM exceeded the jail's memory limit (\(options.limits.memoryBytes >> 20) MiB: guest RAM plus \(JailOptions.vmmOverheadMiB) MiB) and the kernel's OOM killer ended it")
            } else {
                _ = fail("the VMM was killed by signal \(signal) (\(signalName(signal)))")
            }
            return 128 + signal
        }
    }

    /// The VMM gets PATH (it runs `ip` for --net before entering the jail) and Kiln's own
    /// KILN_* settings; it clears even those once it is in the jail.
    static func childEnvironment() -> [String] {
        var env: [String] = []
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if s.hasPrefix("PATH=") || s.hasPrefix("KILN_") { env.append(s) }
            e += 1
        }
        if !env.contains(where: { $0.hasPrefix("PATH=") }) { env.append("PATH=/usr/sbin:/usr/bin:/sbin:/bin") }
        return env
    }

    /// Removes the jail directories and cgroups of supervisors that no longer run (a supervisor
    /// killed by SIGKILL cannot clean up; its VMM died with it through PR_SET_PDEATHSIG), and
    /// of detached VMMs that no longer run.
    public static func sweep() {
        for name in Files.list(jailBase) where isStale(name) {
            let dir = "\(jailBase)/\(name)"
            for path in (Files.read("\(dir)/cleanup") ?? "").split(separator: "\n").map(String.init) where Files.isSocket(path) {
                unlink(path)
            }
            removeJailDirectory(dir)
        }
        Cgroup.sweep(isStale: isStale)
    }

    /// A VM id (or a sandbox directory's suffix) is `<owner pid>-<rest>`; its entries are stale
    /// once that process is gone. A detached VMM's is `d<creator pid>-<rest>`: once its jail
    /// directory holds the VMM's identity (`detached`) it is stale when the VMM is gone, whatever
    /// became of its creator; before that (while it is being started), when the creator is.
    public static func isStale(_ id: String) -> Bool {
        var owner = Substring(id)
        if owner.hasPrefix("d") {
            if !id.contains("/"), let text = Files.read("\(jailBase)/\(id)/detached") {
                return !(ProcessIdentity(text: text)?.isAlive ?? false)
            }
            owner = owner.dropFirst()
        }
        guard let dash = owner.firstIndex(of: "-"), let pid = pid_t(owner[..<dash]), pid > 0 else { return false }
        return pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH
    }

    static func removeJailDirectory(_ dir: String) {
        for name in ["cleanup", "vmm.pid", "detached"] { unlink("\(dir)/\(name)") }
        rmdir("\(dir)/root")
        rmdir(dir)
    }

    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
    }

    static func signalName(_ signal: Int32) -> String {
        guard let text = strsignal(signal) else { return "unknown" }
        var bytes: [UInt8] = []
        var p = text
        while p.pointee != 0 { bytes.append(UInt8(bitPattern: p.pointee)); p += 1 }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func fail(_ message: String) -> Int32 {
        writeRaw(2, "kiln: \(message)\n")
        return 1
    }

    static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
