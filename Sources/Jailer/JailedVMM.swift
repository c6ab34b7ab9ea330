import CSandbox
import Glibc
import LinuxSys

/// One jailed VMM process and everything made for it: the jail directory, the cgroup and the
/// control socket. `start` returns once the VMM runs; `wait` serves it until it exits, then
/// removes all of it. `kiln boot` uses it through `Supervisor.run`; a library (`kiln run`'s
/// sandbox) can hold one for a VM whose console is a log file rather than the terminal.
public final class JailedVMM: Sendable {
    public let id: String
    public let pid: pid_t
    let pidfd: Int32
    let control: Int32
    let directory: String
    let cgroup: Cgroup
    public let options: JailOptions

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// How the VMM ended.
    public enum Ending: Sendable, Equatable {
        case exited(Int32)
        /// Killed by `signal`; `outOfMemory` when the cgroup's OOM killer did it.
        case signaled(Int32, outOfMemory: Bool)
    }

    init(id: String, pid: pid_t, pidfd: Int32, control: Int32, directory: String, cgroup: Cgroup, options: JailOptions) {
        self.id = id; self.pid = pid; self.pidfd = pidfd; self.control = control
        self.directory = directory; self.cgroup = cgroup; self.options = options
    }

    /// Starts `kiln __vmm` (this executable) jailed, with `arguments` as its `kiln boot` options
    /// and `stdio` (-1 keeps this process's) as its stdin, stdout and stderr.
    public static func start(arguments: [String], options: JailOptions, stdio: [Int32] = [-1, -1, -1]) throws(Failure) -> JailedVMM {
        Supervisor.sweep()
        let id = "\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        let dir = "\(Supervisor.jailBase)/\(id)", root = "\(dir)/root"
        do {
            try Files.makeDirectories(root)
            try Files.write("\(dir)/cleanup", options.vsockPath.map { Supervisor.absolute($0) + "\n" } ?? "", create: true)
        } catch {
            Supervisor.removeJailDirectory(dir)
            throw Failure(description: "cannot create the jail directory \(dir): \(error)")
        }
        let cgroup: Cgroup
        do { cgroup = try Cgroup.create(id: id, limits: options.limits) } catch {
            Supervisor.removeJailDirectory(dir)
            throw Failure(description: error.description)
        }
        func undo() { cgroup.remove(); Supervisor.removeJailDirectory(dir) }

        var pair: [Int32] = [-1, -1]
        if options.vsockPath != nil {
            guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                undo()
                throw Failure(description: "socketpair: \(Errno.current("socketpair"))")
            }
        }
        let spec = JailSpec(root: root, uid: options.uid, gid: options.gid, fileSize: options.fileSize,
                            control: options.vsockPath != nil)
        let argv = ["kiln", "__vmm", spec.encoded] + arguments
        var pidfd: Int32 = -1, release: Int32 = -1
        let stdio3 = (0..<3).map { $0 < stdio.count ? stdio[$0] : -1 }
        let pid = Supervisor.withCStrings(argv) { cArgv in
            Supervisor.withCStrings(Supervisor.childEnvironment()) { cEnv in
                stdio3.withUnsafeBufferPointer { kiln_jail_spawn("/proc/self/exe", cArgv, cEnv, $0.baseAddress, pair[1], &pidfd, &release) }
            }
        }
        let spawnError = Errno.current("clone3")
        if pair[1] >= 0 { close(pair[1]) }
        guard pid > 0 else {
            if pair[0] >= 0 { close(pair[0]) }
            undo()
            throw Failure(description: "cannot start the jailed VMM: \(spawnError)")
        }
        do { try cgroup.add(pid: pid) } catch {
            _ = kiln_jail_release(release, 0)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(pidfd)
            if pair[0] >= 0 { close(pair[0]) }
            undo()
            throw Failure(description: error.description)
        }
        try? Files.write("\(dir)/vmm.pid", "\(pid)\n", create: true)
        _ = kiln_jail_release(release, 1)
        return JailedVMM(id: id, pid: pid, pidfd: pidfd, control: pair[0], directory: dir, cgroup: cgroup, options: options)
    }

    /// Kills the VMM (SIGKILL); `wait` then reports it and cleans up.
    public func kill() { _ = Glibc.kill(pid, SIGKILL) }

    /// Blocks until the VMM exits, serving its control requests, then removes its jail directory,
    /// cgroup and vsock socket. Call it once. When `interrupt` (e.g. a signalfd) becomes readable,
    /// `onInterrupt` runs (it may call `kill()`).
    public func wait(interrupt: Int32 = -1, onInterrupt: () -> Void = {}) -> Ending {
        var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: control, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 3, -1) < 0 {
                if errno == EINTR { continue }
                kill()
                break
            }
            if fds[1].revents != 0 { onInterrupt() }
            if fds[2].revents & Int16(POLLIN) != 0, let path = options.vsockPath {
                if !VsockBroker.serve(control, vsockPath: path) { fds[2].fd = -1 }
            } else if fds[2].revents != 0 {
                fds[2].fd = -1
            }
            if fds[0].revents != 0 { break }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let outOfMemory = cgroup.oomKills > 0
        close(pidfd)
        if control >= 0 { close(control) }
        if let path = options.vsockPath, Files.isSocket(path) { unlink(path) }
        cgroup.remove()
        Supervisor.removeJailDirectory(directory)
        if status & 0x7F == 0 { return .exited((status >> 8) & 0xFF) }
        return .signaled(status & 0x7F, outOfMemory: outOfMemory)
    }
}
