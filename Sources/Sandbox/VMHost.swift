import Glibc
import Jailer
import LinuxSys
import Synchronization
import VMM

/// Where a sandbox's VMM runs. As root, Kiln jails it (`automatic`); `inProcess` runs it on a
/// thread of the calling process, with per-thread seccomp filters but no jail (the only choice
/// without root, and a debugging aid with it; see docs/security.md).
public enum Isolation: Sendable, Equatable {
    case automatic
    case jailed
    case inProcess

    var jails: Bool {
        switch self {
        case .automatic: geteuid() == 0
        case .jailed: true
        case .inProcess: false
        }
    }
}

/// A running VM behind a sandbox: ended on `stop`, with its outcome once it is over.
protocol VMHost: Sendable {
    /// The VMM's process when it is not this one.
    var vmmProcess: (pid: pid_t, jail: String)? { get }
    /// How the VM ended, once it has (nil while it runs).
    var ended: MachineOutcome? { get }
    /// Ends the VM if it still runs, waits for it and releases what it held.
    func stop()
    func snapshot(to directory: String) throws(SandboxError)
}

/// The VMM as a thread of this process.
final class InProcessVM: VMHost {
    let machine: Machine
    let thread: LinuxSys.Thread
    let outcome = OutcomeBox()

    init(_ machine: Machine) throws(SandboxError) {
        self.machine = machine
        let outcome = self.outcome
        do {
            thread = try LinuxSys.Thread.spawn(name: "kiln-vm") {
                let result = machine.run()
                outcome.value.withLock { $0 = result }
            }
        } catch {
            throw .setup("cannot start the VM thread: \(error)")
        }
    }

    var ended: MachineOutcome? { outcome.value.withLock { $0 } }
    var vmmProcess: (pid: pid_t, jail: String)? { nil }

    func stop() {
        machine.stop(.userQuit)
        thread.join()
    }

    func snapshot(to directory: String) throws(SandboxError) {
        do { try machine.snapshot(to: directory) } catch { throw .setup(error.description) }
    }
}

/// The VMM as a jailed `kiln __vmm` process (Sources/Jailer): its own namespaces, cgroup,
/// unprivileged user and seccomp filters. A thread of this process waits for it, serving its
/// requests for host sockets, and removes its jail, cgroup and vsock socket when it ends.
final class JailedVM: VMHost {
    let vmm: JailedVMM
    let waiter: LinuxSys.Thread
    let outcome = OutcomeBox()

    /// Starts the VMM with `arguments` (`boot ...` or `restore ...`), its console on `console`.
    init(arguments: [String], cpus: Int, memoryMiB: Int, largestDisk: UInt64, vsockPath: String, console: Int32) throws(SandboxError) {
        var options = JailOptions(cpus: cpus, memoryMiB: memoryMiB)
        options.vsockPath = vsockPath
        options.commands = true
        options.fileSize = max(JailSpec.minimumFileSize, largestDisk)
        guard let executable = JailedVM.kilnExecutable() else {
            throw .setup("as root, a sandbox's VMM runs jailed as `kiln __vmm`, and no kiln executable was found (set KILN_EXECUTABLE, or use the in-process isolation)")
        }
        options.executable = executable
        // The VMM gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG follows the
        // thread, not the process), so a thread that lives as long as it starts it and waits.
        let started = StartBox(), outcome = self.outcome, limitMiB = options.limits.memoryBytes >> 20
        let launch = options
        do {
            waiter = try LinuxSys.Thread.spawn(name: "kiln-jail-wait") {
                let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
                let vmm: JailedVMM
                do throws(JailedVMM.Failure) { vmm = try JailedVMM.start(arguments: arguments, options: launch, stdio: [null, console, console]) } catch {
                    if null >= 0 { close(null) }
                    started.set(.failure(error))
                    return
                }
                if null >= 0 { close(null) }
                started.set(.success(vmm))
                let ending = vmm.wait()
                outcome.value.withLock { $0 = JailedVM.outcome(ending, limitMiB: limitMiB) }
            }
        } catch {
            throw .setup("cannot start the thread that runs the VMM: \(error)")
        }
        switch started.wait() {
        case .success(let vmm): self.vmm = vmm
        case .failure(let error):
            waiter.join()
            throw .setup(error.description)
        }
    }

    var ended: MachineOutcome? { outcome.value.withLock { $0 } }
    var vmmProcess: (pid: pid_t, jail: String)? { (vmm.pid, vmm.directory) }

    func stop() {
        let runningBefore = ended == nil
        vmm.kill()
        waiter.join()
        // Killed because the caller asked: that is a stop, not a failure.
        if runningBefore { outcome.value.withLock { $0 = .userQuit } }
    }

    func snapshot(to directory: String) throws(SandboxError) {
        do { try vmm.snapshot(to: directory) } catch { throw .setup(error.description) }
    }

    static func outcome(_ ending: JailedVMM.Ending, limitMiB: UInt64) -> MachineOutcome {
        switch ending {
        case .exited(0): .guestShutdown
        case .exited(let code): .failed("the VMM exited with status \(code) (its reason is in the console log)")
        case .signaled(_, outOfMemory: true):
            .failed("the VMM exceeded its jail's memory limit (\(limitMiB) MiB) and the kernel's OOM killer ended it")
        case .signaled(let signal, outOfMemory: false): .failed("the VMM was killed by signal \(signal)")
        }
    }

    /// The `kiln` executable to run as the VMM: $KILN_EXECUTABLE, this process if it is kiln,
    /// or a `kiln` beside this executable (a test runner in the same build directory).
    static func kilnExecutable() -> String? {
        if let p = getenv("KILN_EXECUTABLE"), p.pointee != 0 { return String(cString: p) }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let me = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if me.hasSuffix("/kiln") { return "/proc/self/exe" }
        guard let slash = me.lastIndex(of: "/") else { return nil }
        let sibling = String(me[..<slash]) + "/kiln"
        return access(sibling, X_OK) == 0 ? sibling : nil
    }
}

/// How the VM ended, set by the thread that runs or waits for it.
final class OutcomeBox: Sendable {
    let value = Mutex<MachineOutcome?>(nil)
}

/// The jailed VMM's start, handed from the thread that started it to the one waiting for it.
final class StartBox: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var result: Result<JailedVMM, JailedVMM.Failure>?

    init() { pthread_mutex_init(mutex, nil); pthread_cond_init(condition, nil) }
    deinit {
        pthread_cond_destroy(condition); pthread_mutex_destroy(mutex)
        condition.deallocate(); mutex.deallocate()
    }

    func set(_ r: Result<JailedVMM, JailedVMM.Failure>) {
        pthread_mutex_lock(mutex); result = r; pthread_cond_broadcast(condition); pthread_mutex_unlock(mutex)
    }

    func wait() -> Result<JailedVMM, JailedVMM.Failure> {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while result == nil { pthread_cond_wait(condition, mutex) }
        return result!
    }
}
