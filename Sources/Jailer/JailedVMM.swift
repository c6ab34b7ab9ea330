import CSandbox
import Glibc
import LinuxSys
import Synchronization

/// One jailed VMM process and everything made for it: the jail directory, the cgroup and the
/// control socket. `start` returns once the VMM runs; `wait` serves it until it exits, then
/// removes all of it. `kiln boot` uses it through `Supervisor.run`; a library (`kiln run`'s
/// sandbox) can hold one for a VM whose console is a log file rather than the terminal.
public final class JailedVMM: Sendable {
    public let id: String
    public let pid: pid_t
    let pidfd: Int32
    let control: Int32
    /// The command channel (pause, resume, snapshot), when `options.commands`; -1 otherwise.
    let commands: Int32
    /// One request at a time on the command channel.
    let commandLock = Mutex(())
    /// The jail directory (`/run/kiln/jail/ID`), removed when the VMM has ended.
    public let directory: String
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

    init(id: String, pid: pid_t, pidfd: Int32, control: Int32, commands: Int32, directory: String, cgroup: Cgroup, options: JailOptions) {
        self.id = id; self.pid = pid; self.pidfd = pidfd; self.control = control; self.commands = commands
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

        // fd 3: the VMM's requests for host sockets; fd 4: the supervisor's commands.
        var pair: [Int32] = [-1, -1], commandPair: [Int32] = [-1, -1]
        let seqpacket = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if options.vsockPath != nil || options.commands {
            guard socketpair(AF_UNIX, seqpacket, 0, &pair) == 0 else {
                undo()
                throw Failure(description: "socketpair: \(Errno.current("socketpair"))")
            }
        }
        if options.commands {
            guard socketpair(AF_UNIX, seqpacket, 0, &commandPair) == 0 else {
                close(pair[0]); close(pair[1])
                undo()
                throw Failure(description: "socketpair: \(Errno.current("socketpair"))")
            }
        }
        func closeOurs() { for fd in [pair[0], commandPair[0]] where fd >= 0 { close(fd) } }
        let spec = JailSpec(root: root, uid: options.uid, gid: options.gid, fileSize: options.fileSize,
                            control: options.vsockPath != nil, commands: options.commands)
        let argv = ["kiln", "__vmm", spec.encoded] + arguments
        var pidfd: Int32 = -1, release: Int32 = -1
        let stdio3 = (0..<3).map { $0 < stdio.count ? stdio[$0] : -1 }
        let childControl = [pair[1], commandPair[1]]
        let pid = Supervisor.withCStrings(argv) { cArgv in
            Supervisor.withCStrings(Supervisor.childEnvironment()) { cEnv in
                stdio3.withUnsafeBufferPointer { io in
                    childControl.withUnsafeBufferPointer {
                        kiln_jail_spawn(options.executable, cArgv, cEnv, io.baseAddress, $0.baseAddress, &pidfd, &release)
                    }
                }
            }
        }
        let spawnError = Errno.current("clone3")
        for fd in childControl where fd >= 0 { close(fd) }
        guard pid > 0 else {
            closeOurs()
            undo()
            throw Failure(description: "cannot start the jailed VMM: \(spawnError)")
        }
        do { try cgroup.add(pid: pid) } catch {
            _ = kiln_jail_release(release, 0)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(pidfd)
            closeOurs()
            undo()
            throw Failure(description: error.description)
        }
        try? Files.write("\(dir)/vmm.pid", "\(pid)\n", create: true)
        _ = kiln_jail_release(release, 1)
        return JailedVMM(id: id, pid: pid, pidfd: pidfd, control: options.vsockPath != nil ? pair[0] : -1, commands: commandPair[0],
                         directory: dir, cgroup: cgroup, options: options)
    }

    /// Sends one command to the VMM (with `descriptors` attached) and returns its reply line.
    public func request(_ command: String, descriptors: [Int32] = []) throws(Failure) -> String {
        try commandLock.withLock { _ throws(Failure) in
            guard commands >= 0 else { throw Failure(description: "this VMM was started without a command channel") }
            do {
                try UnixSocket.sendMessage(commands, Array(command.utf8), descriptors: descriptors)
                let reply = try UnixSocket.receiveMessage(commands, capacity: 4096)
                reply.descriptors.forEach { close($0) }
                guard !reply.bytes.isEmpty else { throw Failure(description: "the VMM ended before it answered '\(command)'") }
                return String(decoding: reply.bytes, as: UTF8.self)
            } catch let error as Errno {
                throw Failure(description: "the VMM's command channel: \(error)")
            } catch let error as Failure {
                throw error
            } catch {
                throw Failure(description: "\(error)")
            }
        }
    }

    /// Snapshots the VM into `directory` (created if missing). The VMM cannot see the host's
    /// files: this process creates them (owned by root, mode 0600) and passes their descriptors;
    /// the VMM writes them, and the state file is renamed into place last.
    @discardableResult
    public func snapshot(to directory: String) throws(Failure) -> String {
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
            throw Failure(description: "cannot create \(directory): \(Errno.current("mkdir"))")
        }
        // The VMM names the files (memory, state, one per overlay disk); it is not trusted, so a
        // name must be a plain file name.
        let files = try request("files")
        let names = files.split(separator: " ").dropFirst().map(String.init)
        guard files.hasPrefix("ok "), names.count >= 2, names[0] == "memory", names[1] == "state", names.count <= 16,
              names.allSatisfy({ name in !name.hasPrefix(".") && name.utf8.allSatisfy { isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") } })
        else { throw Failure(description: "snapshot: unexpected file list from the VMM: \(files)") }
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        for name in names {
            let path = directory + "/" + (name == "state" ? "state.tmp" : name)
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw Failure(description: "cannot create \(path): \(Errno.current("open"))") }
            fds.append(fd)
        }
        unlink(directory + "/state")
        let reply = try request("snapshot", descriptors: fds)
        guard reply.hasPrefix("ok") else { unlink(directory + "/state.tmp"); throw Failure(description: "snapshot: \(reply)") }
        guard rename(directory + "/state.tmp", directory + "/state") == 0 else {
            throw Failure(description: "cannot rename the state file in \(directory): \(Errno.current("rename"))")
        }
        return reply
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
        commandLock.withLock { _ in if commands >= 0 { shutdown(commands, Int32(SHUT_RDWR)) } }
        if let path = options.vsockPath, Files.isSocket(path) { unlink(path) }
        cgroup.remove()
        Supervisor.removeJailDirectory(directory)
        if status & 0x7F == 0 { return .exited((status >> 8) & 0xFF) }
        return .signaled(status & 0x7F, outOfMemory: outOfMemory)
    }
}
