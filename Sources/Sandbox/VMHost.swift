import Glibc
import Jailer
import LinuxSys
import Synchronization
import VMM
import VMMProtocol

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
    /// Parks the vCPUs and the device thread (the VM keeps its state; its clocks run on).
    func pause() throws(SandboxError)
    /// Lets a paused VM run again (a running one is left alone).
    func resume() throws(SandboxError)
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

    func pause() throws(SandboxError) {
        do { try machine.pause() } catch { throw .setup(error.description) }
    }

    func resume() throws(SandboxError) {
        do { try machine.resume() } catch { throw .setup(error.description) }
    }
}

/// The VMM as a jailed `kiln-vmm` process (Sources/Jailer): its own namespaces, cgroup,
/// unprivileged user and seccomp filters. A thread of this process waits for it, serving its
/// requests for host sockets, and removes its jail, cgroup and vsock socket when it ends.
final class JailedVM: VMHost {
    let vmm: JailedVMM
    let waiter: LinuxSys.Thread
    let outcome = OutcomeBox()

    /// Starts the VMM as `launch` says, its console on `console`. `detached`: the VMM outlives
    /// this process, takes commands on `directory/commands.sock` and is recorded in
    /// `directory/sandbox.record` (Sandbox.adopt).
    init(_ launch: VMMLaunch, cpus: Int, memoryMiB: Int, largestDisk: UInt64, directory: String, console: Int32,
         lifetime: Sandbox.Lifetime) throws(SandboxError) {
        var options = JailOptions(cpus: cpus, memoryMiB: memoryMiB)
        options.vsockPath = directory + "/vsock.sock"
        options.commands = true
        options.fileSize = max(JailSpec.minimumFileSize, largestDisk)
        if lifetime == .detached {
            options.detached = true
            options.commandSocket = directory + "/" + Sandbox.commandSocketName
            options.recordPath = directory + "/" + Sandbox.recordName
        }
        guard let executable = VMMExecutable.locate() else {
            throw .setup("as root, a sandbox's VMM runs jailed as `kiln-vmm`, and no kiln-vmm executable was found beside this program (set KILN_VMM, or use the in-process isolation)")
        }
        options.executable = executable
        // A tied VMM gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG follows
        // the thread, not the process), so a thread that lives as long as it starts it and waits.
        let started = StartBox(), outcome = self.outcome, limitMiB = options.limits.memoryBytes >> 20
        let jailOptions = options
        // A headless VMM reads no input: with a console cap, its stdin is the log's rotation file.
        let rotation = launch.consoleRotation == nil ? -1 : try Sandbox.openConsoleRotation(directory)
        do {
            waiter = try LinuxSys.Thread.spawn(name: "kiln-jail-wait") {
                let input = rotation >= 0 ? rotation : open("/dev/null", O_RDONLY | O_CLOEXEC)
                let vmm: JailedVMM
                do throws(JailedVMM.Failure) { vmm = try JailedVMM.start(launch, options: jailOptions, stdio: [input, console, console]) } catch {
                    if input >= 0 { close(input) }
                    started.set(.failure(error))
                    return
                }
                if input >= 0 { close(input) }
                started.set(.success(vmm))
                let ending = vmm.wait()
                outcome.value.withLock { $0 = JailedVM.outcome(ending, limitMiB: limitMiB) }
            }
        } catch {
            if rotation >= 0 { close(rotation) }
            throw .setup("cannot start the thread that runs the VMM: \(error)")
        }
        switch started.wait() {
        case .success(let vmm): self.vmm = vmm
        case .failure(let error):
            waiter.join()
            throw .setup(error.description)
        }
    }

    /// Takes over the running detached VMM of `record` (Sandbox.adopt): a thread waits on its
    /// pidfd and removes its jail, cgroup and sockets once it has ended.
    init(adopting record: VMMRecord) throws(SandboxError) {
        do { vmm = try JailedVMM.adopt(record) } catch {
            switch error {
            case .gone: throw .vmGone(directory: "")
            case .unreachable(let why): throw .setup(why)
            }
        }
        let vmm = self.vmm, outcome = self.outcome
        do {
            waiter = try LinuxSys.Thread.spawn(name: "kiln-jail-wait") {
                let ending = vmm.wait()
                outcome.value.withLock { $0 = JailedVM.outcome(ending, limitMiB: 0) }
            }
        } catch {
            vmm.kill()
            throw .setup("cannot start the thread that waits for the VMM: \(error)")
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

    func pause() throws(SandboxError) { try command(.pause) }
    func resume() throws(SandboxError) { try command(.resume) }

    private func command(_ command: VMMCommand) throws(SandboxError) {
        let reply: String
        do { reply = try vmm.request(command) } catch { throw .setup(error.description) }
        guard reply.hasPrefix("ok") else { throw .setup("the VMM refused '\(command.text)': \(reply)") }
    }

    static func outcome(_ ending: JailedVMM.Ending, limitMiB: UInt64) -> MachineOutcome {
        switch ending {
        case .exited(0): .guestShutdown
        case .exited(let code): .failed("the VMM exited with status \(code) (its reason is in the console log)")
        case .signaled(_, outOfMemory: true):
            .failed("the VMM exceeded its jail's memory limit (\(limitMiB) MiB) and the kernel's OOM killer ended it")
        case .signaled(let signal, outOfMemory: false): .failed("the VMM was killed by signal \(signal)")
        case .endedElsewhere(outOfMemory: true): .failed("the VMM exceeded its jail's memory limit and the kernel's OOM killer ended it")
        case .endedElsewhere(outOfMemory: false): .failed("the VMM ended (its exit status went to the process that started it)")
        }
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
