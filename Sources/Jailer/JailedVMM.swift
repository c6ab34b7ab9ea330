import CSandbox
import Glibc
import LinuxSys
import Synchronization
import VMMProtocol

/// One jailed VMM process and everything made for it: the jail directory, the cgroup and the
/// control socket. `start` returns once the VMM runs; `wait` serves it until it exits, then
/// removes all of it. `kiln boot` uses it through `Supervisor.run`; a library (`kiln run`'s
/// sandbox) can hold one for a VM whose console is a log file rather than the terminal.
/// `adopt` takes over a detached VMM another process started (docs/security.md, "Detached sandboxes").
public final class JailedVMM: Sendable {
    public let id: String
    public let pid: pid_t
    /// The VMM's pidfd; closed (and set to -1) by `wait` under the lock, so `kill` never
    /// signals a descriptor number that was reused.
    private let pidfd: Mutex<Int32>
    let control: Int32
    /// The command channel (pause, resume, snapshot), when `options.commands`; -1 otherwise.
    let commands: Int32
    /// One request at a time on the command channel.
    let commandLock = Mutex(())
    /// The jail directory (`/run/kiln/jail/ID`), removed when the VMM has ended.
    public let directory: String
    public let cgroup: Cgroup
    public let options: JailOptions
    /// Whether this process started the VMM (and so can reap it and read its exit status).
    let isChild: Bool
    /// The VMM's identity (pid, start time, boot id), recorded for a detached VMM.
    public let identity: ProcessIdentity?

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// How the VMM ended.
    public enum Ending: Sendable, Equatable {
        case exited(Int32)
        /// Killed by `signal`; `outOfMemory` when the cgroup's OOM killer did it.
        case signaled(Int32, outOfMemory: Bool)
        /// An adopted VMM (not this process's child) ended: its exit status went to its parent.
        case endedElsewhere(outOfMemory: Bool)
    }

    /// The launcher's status pipe for a VMM it started for this process (`VMMLauncher`); -1 otherwise.
    let status: Int32

    init(id: String, pid: pid_t, pidfd: Int32, control: Int32, commands: Int32, directory: String, cgroup: Cgroup,
         options: JailOptions, isChild: Bool, identity: ProcessIdentity?, status: Int32 = -1) {
        self.id = id; self.pid = pid; self.pidfd = Mutex(pidfd); self.control = control; self.commands = commands
        self.directory = directory; self.cgroup = cgroup; self.options = options; self.isChild = isChild; self.identity = identity
        self.status = status
    }

    /// `wait` only shuts the command channel down (a request on another thread may still hold
    /// its number); the descriptor itself goes with the last reference. A service that started
    /// a sandbox per request kept one socket per sandbox it ever ran (Benchmarks/soak.sh).
    deinit { if commands >= 0 { close(commands) } }

    private static let spawnerSetting = Mutex<any VMMSpawner>(LocalSpawner())

    /// Who starts VMM processes for `start`: this process (`LocalSpawner`, the default) or, in
    /// `kiln serve`, its launcher, set once before the first sandbox starts.
    public static var spawner: any VMMSpawner {
        get { spawnerSetting.withLock { $0 } }
        set { spawnerSetting.withLock { $0 = newValue } }
    }

    /// Reads the 4-byte wait status the launcher writes to a status pipe; nil if it ended first.
    static func readStatus(_ fd: Int32) -> Int32? {
        var status: Int32 = 0, got = 0
        while got < 4 {
            let n = withUnsafeMutableBytes(of: &status) { read(fd, $0.baseAddress! + got, 4 - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            got += n
        }
        return status
    }

    /// Starts the VMM executable (`options.executable`, `kiln-vmm`) jailed: `launch` (with the
    /// jail filled in here) goes to it as the first message on fd 3, and `stdio` (-1 keeps this
    /// process's) become its stdin, stdout and stderr.
    public static func start(_ launch: VMMLaunch, options: JailOptions, stdio: [Int32] = [-1, -1, -1]) throws(Failure) -> JailedVMM {
        guard access(options.executable, X_OK) == 0 else {
            throw Failure(description: "the VMM executable \(options.executable) was not found (kiln-vmm is looked for beside this executable; KILN_VMM names another)")
        }
        Supervisor.sweep()
        // `d<pid>-...` for a detached VMM: sweeps keyed on the creator's pid pass it by, even
        // those of older Kiln builds on the host; it is stale only once the VMM is gone.
        let id = "\(options.detached ? "d" : "")\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
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
        var ours: [Int32] = []
        func undo() {
            ours.forEach { close($0) }
            if let path = options.commandSocket { unlink(path) }
            cgroup.remove()
            Supervisor.removeJailDirectory(dir)
        }

        // fd 3: the launch, then the VMM's requests for host sockets; fd 4: the supervisor's
        // commands, on a socket pair or (detached) on a listening socket anyone may reconnect to.
        var pair: [Int32] = [-1, -1], commandPair: [Int32] = [-1, -1]
        let seqpacket = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, seqpacket, 0, &pair) == 0 else {
            undo()
            throw Failure(description: "socketpair: \(Errno.current("socketpair"))")
        }
        ours.append(pair[0])
        var commandKind = JailSpec.Commands.none
        if let path = options.commandSocket {
            do { commandPair[1] = try UnixSocket.listenMessages(path: path).release() } catch {
                close(pair[1])
                undo()
                throw Failure(description: "cannot listen on the command socket: \(error)")
            }
            commandKind = .listener
        } else if options.commands {
            guard socketpair(AF_UNIX, seqpacket, 0, &commandPair) == 0 else {
                close(pair[1])
                undo()
                throw Failure(description: "socketpair: \(Errno.current("socketpair"))")
            }
            ours.append(commandPair[0])
            commandKind = .channel
        }
        let childControl = [pair[1], commandPair[1]]
        func closeChildEnds() { for fd in childControl where fd >= 0 { close(fd) } }

        var launch = launch
        // With shares, the VMM runs as their owner, so the host's own permission checks decide what
        // the guest may touch and the files it creates are that owner's (docs/volumes.md, "The jail"),
        // and may hold a descriptor per inode the guest caches.
        var uid = options.uid, gid = options.gid, openFiles = JailSpec.defaultOpenFiles
        if let share = launch.boundShares.first {
            if share.uid != 0 && share.gid != 0 && options.uid == JailSpec.defaultUID { uid = share.uid; gid = share.gid }
            let systemMax = Files.read("/proc/sys/fs/nr_open").flatMap { UInt64($0.filter(\.isNumber)) } ?? 1 << 20
            // Never above this process's hard limit: raising it needs CAP_SYS_RESOURCE, which a container may lack.
            var limit = rlimit()
            let hard = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 ? UInt64(limit.rlim_max) : JailSpec.defaultOpenFiles
            openFiles = max(JailSpec.defaultOpenFiles, min(JailSpec.shareOpenFiles, systemMax, hard))
        }
        launch.jail = JailSpec(root: root, uid: uid, gid: gid, openFiles: openFiles, fileSize: options.fileSize,
                               control: options.vsockPath != nil, commands: commandKind, detached: options.detached)
        // Queued before the VMM exists: it reads the launch as its first act.
        do { try UnixSocket.sendMessage(pair[0], launch.encoded()) } catch {
            closeChildEnds()
            undo()
            throw Failure(description: "cannot send the VMM its launch configuration: \(error)")
        }

        let spawned: SpawnedVMM
        do {
            spawned = try JailedVMM.spawner.spawn(executable: options.executable, argv: ["kiln-vmm"], environment: Supervisor.childEnvironment(),
                                                  stdio: stdio, control: childControl, detached: options.detached)
        } catch {
            closeChildEnds()
            undo()
            throw error
        }
        closeChildEnds()
        let pid = spawned.pid, pidfd = spawned.pidfd, release = spawned.release
        /// Waits for a child that will not run the VMM (released with 'x', or killed) to end.
        func reapUnused() {
            if spawned.status >= 0 {
                _ = JailedVMM.readStatus(spawned.status)
                close(spawned.status)
            } else {
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }
        func abandonChild() {
            _ = kiln_jail_release(release, 0)
            reapUnused()
            close(pidfd)
            undo()
        }
        do { try cgroup.add(pid: pid) } catch {
            abandonChild()
            throw Failure(description: error.description)
        }
        try? Files.write("\(dir)/vmm.pid", "\(pid)\n", create: true)
        // A detached VMM is recorded before it may run: if this process dies first, the child
        // exits (its release pipe closes) and the record names a VMM that is gone, for a sweep.
        var identity: ProcessIdentity?
        if options.detached {
            do throws(Failure) {
                guard let me = ProcessIdentity.of(pid) else { throw Failure(description: "cannot read the VMM's start time") }
                identity = me
                do { try Files.write("\(dir)/detached", me.text, create: true) } catch {
                    throw Failure(description: "cannot write \(dir)/detached: \(error)")
                }
                if let path = options.recordPath, let commandSocket = options.commandSocket, let vsock = options.vsockPath {
                    let record = VMMRecord(pid: pid, startTime: me.startTime, bootID: me.bootID, jailDirectory: dir,
                                           cgroups: cgroup.directories, cgroupV2: cgroup.version == .v2,
                                           vsockPath: Supervisor.absolute(vsock), commandSocket: Supervisor.absolute(commandSocket))
                    do { try Files.writeAtomically(path, record.encoded()) } catch {
                        throw Failure(description: "cannot write the sandbox record \(path): \(error)")
                    }
                }
            } catch {
                abandonChild()
                throw error
            }
        }
        _ = kiln_jail_release(release, 1)
        var commands = commandKind == .channel ? commandPair[0] : -1
        if commandKind == .listener, let path = options.commandSocket {
            // The listener is the VMM's now; this process is its first client.
            do { commands = try UnixSocket.connectMessages(path: path).release() } catch {
                _ = kiln_pidfd_kill(pidfd, SIGKILL)
                reapUnused()
                close(pidfd)
                undo()
                throw Failure(description: "cannot connect to the VMM's command socket: \(error)")
            }
        }
        let control = options.vsockPath != nil ? pair[0] : -1
        if control < 0 { close(pair[0]) }
        return JailedVMM(id: id, pid: pid, pidfd: pidfd, control: control, commands: commands, directory: dir, cgroup: cgroup,
                         options: options, isChild: spawned.status < 0, identity: identity, status: spawned.status)
    }

    /// Why `adopt` could not take a detached VMM over.
    public enum AdoptFailure: Error, CustomStringConvertible {
        /// The recorded process no longer runs (or its pid now belongs to another process).
        case gone
        case unreachable(String)

        public var description: String {
            switch self {
            case .gone: "the VMM is gone"
            case .unreachable(let why): why
            }
        }
    }

    /// Takes over the detached VMM `record` describes, started by another (maybe dead) process:
    /// verifies its identity (a pidfd opened, then pid and start time checked, so a reused pid is
    /// never taken for it) and connects to its command socket. Guest connections to host
    /// sockets are not served for it (its broker was its first supervisor; docs/security.md).
    public static func adopt(_ record: VMMRecord) throws(AdoptFailure) -> JailedVMM {
        let identity = ProcessIdentity(pid: record.pid, startTime: record.startTime, bootID: record.bootID)
        guard let pidfd = identity.open() else { throw .gone }
        let commands: Int32
        do { commands = try UnixSocket.connectMessages(path: record.commandSocket).release() } catch {
            close(pidfd)
            throw .unreachable("cannot connect to the VMM's command socket \(record.commandSocket): \(error)")
        }
        var options = JailOptions(cpus: 1, memoryMiB: 0)
        options.vsockPath = record.vsockPath
        options.commandSocket = record.commandSocket
        options.detached = true
        let id = String(record.jailDirectory.split(separator: "/").last ?? "")
        return JailedVMM(id: id, pid: record.pid, pidfd: pidfd, control: -1, commands: commands, directory: record.jailDirectory,
                         cgroup: Cgroup(version: record.cgroupV2 ? .v2 : .v1, directories: record.cgroups), options: options,
                         isChild: false, identity: identity)
    }

    /// Removes what a detached VMM that is gone left behind: its vsock and command sockets, its
    /// cgroup (killing anything still in it) and its jail directory. Paths are checked to be
    /// Kiln's own before anything is removed.
    public static func reap(_ record: VMMRecord) {
        for path in [record.vsockPath, record.commandSocket] where Files.isSocket(path) { unlink(path) }
        for dir in record.cgroups where dir.contains("/kiln/") { Cgroup.removeLeaf(dir) }
        if record.jailDirectory.hasPrefix(Supervisor.jailBase + "/") { Supervisor.removeJailDirectory(record.jailDirectory) }
    }

    /// Sends one command to the VMM (with `descriptors` attached) and returns its reply line.
    public func request(_ command: VMMCommand, descriptors: [Int32] = []) throws(Failure) -> String {
        try request(text: command.text, descriptors: descriptors)
    }

    func request(text command: String, descriptors: [Int32]) throws(Failure) -> String {
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
        let files = try request(.files)
        let names = files.split(separator: " ").dropFirst().map(String.init)
        guard files.hasPrefix("ok "), names.count >= 2, names[0] == "memory", names[1] == "state", names.count <= 16,
              names.allSatisfy({ name in !name.hasPrefix(".") && name.utf8.allSatisfy { isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") } })
        else { throw Failure(description: "snapshot: unexpected file list from the VMM: \(files)") }
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        let paths = names.map { directory + "/" + ($0 == "state" ? "state.tmp" : $0) }
        // A snapshot that fails leaves none of its files: a partial memory file would hold the
        // space of a full disk (and its name, of a usable snapshot) for nothing.
        func removeFiles() { paths.forEach { unlink($0) } }
        for path in paths {
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                let why = Errno.current("open")
                removeFiles()
                throw Failure(description: "cannot create \(path): \(why)")
            }
            fds.append(fd)
        }
        unlink(directory + "/state")
        let reply: String
        do { reply = try request(.snapshot(directory: nil), descriptors: fds) } catch { removeFiles(); throw error }
        guard reply.hasPrefix("ok") else {
            removeFiles()
            // The VMM's error names the snapshot already ("error: snapshot (...): ...").
            throw Failure(description: reply.hasPrefix("error: ") ? String(reply.dropFirst(7)) : "snapshot: \(reply)")
        }
        guard rename(directory + "/state.tmp", directory + "/state") == 0 else {
            throw Failure(description: "cannot rename the state file in \(directory): \(Errno.current("rename"))")
        }
        return reply
    }

    /// Kills the VMM (SIGKILL, through its pidfd); `wait` then reports it and cleans up.
    public func kill() {
        pidfd.withLock { fd in if fd >= 0 { _ = kiln_pidfd_kill(fd, SIGKILL) } }
    }

    /// Blocks until the VMM exits, serving its control requests, then removes its jail directory,
    /// cgroup and vsock socket. Call it once. When `interrupt` (e.g. a signalfd) becomes readable,
    /// `onInterrupt` runs (it may call `kill()`).
    public func wait(interrupt: Int32 = -1, onInterrupt: () -> Void = {}) -> Ending {
        let processFD = pidfd.withLock { $0 }
        var fds = [pollfd(fd: processFD, events: Int16(POLLIN), revents: 0),
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
        var reaped = false
        if isChild {
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            reaped = true
        } else if self.status >= 0 {
            // The launcher started it: it reaps it and says how it ended (nothing if it died first).
            if let code = JailedVMM.readStatus(self.status) { status = code; reaped = true }
            close(self.status)
        } else {
            // Not our child, unless this process became its parent as a subreaper: then reap it.
            var info = siginfo_t()
            let pidfdType = idtype_t(3) // P_PIDFD
            if waitid(pidfdType, id_t(processFD), &info, WEXITED | WNOHANG) == 0, info._sifields._sigchld.si_pid != 0 {
                let code = info._sifields._sigchld.si_status
                status = info.si_code == 1 /* CLD_EXITED */ ? (code & 0xFF) << 8 : code & 0x7F
                reaped = true
            }
        }
        let outOfMemory = cgroup.oomKills > 0
        pidfd.withLock { fd in close(fd); fd = -1 }
        if control >= 0 { close(control) }
        commandLock.withLock { _ in if commands >= 0 { shutdown(commands, Int32(SHUT_RDWR)) } }
        for path in [options.vsockPath, options.commandSocket].compactMap({ $0 }) where Files.isSocket(path) { unlink(path) }
        cgroup.remove()
        Supervisor.removeJailDirectory(directory)
        guard reaped else { return .endedElsewhere(outOfMemory: outOfMemory) }
        if status & 0x7F == 0 { return .exited((status >> 8) & 0xFF) }
        return .signaled(status & 0x7F, outOfMemory: outOfMemory)
    }
}
