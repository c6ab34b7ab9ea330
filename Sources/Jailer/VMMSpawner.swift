import CSandbox
import Glibc
import LinuxSys
import Synchronization

/// A VMM process just started by `kiln_jail_spawn`, waiting for its release.
public struct SpawnedVMM: Sendable {
    public let pid: pid_t
    public let pidfd: Int32
    /// Written once: 'g' lets the child exec the VMM, anything else (or closing it) makes it exit.
    public let release: Int32
    /// When another process (the launcher) is the VMM's parent: it writes the VMM's wait
    /// status here (4 bytes) once it has reaped it; -1 when this process is the parent.
    public let status: Int32
}

/// What `JailedVMM.start` asks of whoever starts its process: the clone3 into namespaces and
/// the execve (`kiln_jail_spawn`), nothing else. `kiln serve` delegates it to its launcher
/// (`VMMLauncher`), so that its own process can run under a seccomp policy without execve or
/// namespace-making clone3 (docs/security.md, "The service's launcher").
public protocol VMMSpawner: Sendable {
    func spawn(executable: String, argv: [String], environment: [String], stdio: [Int32], control: [Int32],
               detached: Bool) throws(JailedVMM.Failure) -> SpawnedVMM
}

/// Spawns in this process: `kiln run`, `kiln boot`, the launcher itself.
public struct LocalSpawner: VMMSpawner {
    public init() {}

    public func spawn(executable: String, argv: [String], environment: [String], stdio: [Int32], control: [Int32],
                      detached: Bool) throws(JailedVMM.Failure) -> SpawnedVMM {
        var pidfd: Int32 = -1, release: Int32 = -1
        let stdio3 = (0..<3).map { $0 < stdio.count ? stdio[$0] : -1 }
        let control2 = (0..<2).map { $0 < control.count ? control[$0] : -1 }
        let pid = Supervisor.withCStrings(argv) { cArgv in
            Supervisor.withCStrings(environment) { cEnv in
                stdio3.withUnsafeBufferPointer { io in
                    control2.withUnsafeBufferPointer {
                        kiln_jail_spawn(executable, cArgv, cEnv, io.baseAddress, $0.baseAddress, detached ? 1 : 0, &pidfd, &release)
                    }
                }
            }
        }
        guard pid > 0 else { throw JailedVMM.Failure(description: "cannot start the jailed VMM: \(Errno.current("clone3"))") }
        return SpawnedVMM(pid: pid, pidfd: pidfd, release: release, status: -1)
    }
}

/// A helper process that starts VMMs for `kiln serve`: `kiln __launcher`, started (posix_spawn,
/// no fork of the threaded service) before the service confines itself, reached on a
/// SOCK_SEQPACKET socket pair. One request per VMM: the executable, argv, environment and
/// whether it is detached, with its stdio and control descriptors attached (SCM_RIGHTS); the
/// reply carries the pid and three descriptors: its pidfd, its release pipe and a status pipe.
/// The launcher is the VMMs' parent: it reaps each one as it ends (a signalfd for SIGCHLD) and
/// writes the wait status to that VMM's status pipe, so none stays a zombie and the service
/// still learns how it ended. It exits when the service's end of the socket closes; detached
/// VMMs (their own session, no parent-death signal) outlive it.
public final class VMMLauncher: VMMSpawner {
    public let pid: pid_t
    private let socket: Mutex<Int32>

    init(pid: pid_t, socket: Int32) { self.pid = pid; self.socket = Mutex(socket) }

    /// Starts `executable arguments...` as the launcher, its end of the socket pair at fd 3, in
    /// a session of its own (a terminal's Ctrl-C for the service's group does not end it; the
    /// service's exit does, through the socket).
    public static func start(executable: String, arguments: [String]) throws(JailedVMM.Failure) -> VMMLauncher {
        var pair: [Int32] = [-1, -1]
        let seqpacket = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, seqpacket, 0, &pair) == 0 else {
            throw JailedVMM.Failure(description: "socketpair: \(Errno.current("socketpair"))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, 0x80) // POSIX_SPAWN_SETSID (glibc 2.26), not imported into Swift
        var pid: pid_t = 0
        let rc = Supervisor.withCStrings([executable] + arguments) { argv in
            posix_spawn(&pid, executable, &actions, &attributes, UnsafeMutablePointer(mutating: argv), environ)
        }
        close(pair[1])
        guard rc == 0 else {
            close(pair[0])
            throw JailedVMM.Failure(description: "cannot start the VMM launcher \(executable): \(Errno(rc, call: "posix_spawn"))")
        }
        return VMMLauncher(pid: pid, socket: pair[0])
    }

    public func spawn(executable: String, argv: [String], environment: [String], stdio: [Int32], control: [Int32],
                      detached: Bool) throws(JailedVMM.Failure) -> SpawnedVMM {
        let slots = (0..<3).map { $0 < stdio.count ? stdio[$0] : -1 } + (0..<2).map { $0 < control.count ? control[$0] : -1 }
        let request = Launch(executable: executable, argv: argv, environment: environment,
                             present: slots.map { $0 >= 0 }, detached: detached)
        let reply: (bytes: [UInt8], descriptors: [Int32])
        do {
            reply = try socket.withLock { fd throws(Errno) in
                try UnixSocket.sendMessage(fd, request.encoded(), descriptors: slots.filter { $0 >= 0 })
                return try UnixSocket.receiveMessage(fd, capacity: 256, maxDescriptors: 3)
            }
        } catch {
            throw JailedVMM.Failure(description: "the VMM launcher: \(error)")
        }
        let text = String(decoding: reply.bytes, as: UTF8.self)
        guard text.hasPrefix("ok "), let pid = pid_t(text.dropFirst(3)), reply.descriptors.count == 3 else {
            reply.descriptors.forEach { close($0) }
            throw JailedVMM.Failure(description: text.isEmpty ? "the VMM launcher has ended" : "cannot start the jailed VMM: \(text)")
        }
        return SpawnedVMM(pid: pid, pidfd: reply.descriptors[0], release: reply.descriptors[1], status: reply.descriptors[2])
    }

    /// A request other than a launch (`kiln serve` asks its launcher to set up sandbox networks,
    /// which run `ip` and `nft`): NUL-separated fields whose first names the kind (never "0" or
    /// "1", a launch's first field); the launcher's `other` handler answers it with one line.
    public func request(_ fields: [String]) throws(JailedVMM.Failure) -> String {
        precondition(fields.first.map { $0 != "0" && $0 != "1" } ?? false)
        let reply: (bytes: [UInt8], descriptors: [Int32])
        do {
            reply = try socket.withLock { fd throws(Errno) in
                try UnixSocket.sendMessage(fd, Array(fields.joined(separator: "\0").utf8), descriptors: [])
                return try UnixSocket.receiveMessage(fd, capacity: 4096, maxDescriptors: 1)
            }
        } catch {
            throw JailedVMM.Failure(description: "the VMM launcher: \(error)")
        }
        reply.descriptors.forEach { close($0) }
        guard !reply.bytes.isEmpty else { throw JailedVMM.Failure(description: "the VMM launcher has ended") }
        return String(decoding: reply.bytes, as: UTF8.self)
    }

    /// One launch request: NUL-separated fields (a NUL cannot occur in any of them).
    struct Launch: Equatable {
        var executable: String
        var argv: [String]
        var environment: [String]
        /// Which of stdin, stdout, stderr, fd 3 and fd 4 come attached, in that order.
        var present: [Bool]
        var detached: Bool

        func encoded() -> [UInt8] {
            let fields = [detached ? "1" : "0", String(present.map { $0 ? "1" : "0" }), executable, String(argv.count)] + argv + environment
            return Array(fields.joined(separator: "\0").utf8)
        }

        init(executable: String, argv: [String], environment: [String], present: [Bool], detached: Bool) {
            self.executable = executable; self.argv = argv; self.environment = environment; self.present = present; self.detached = detached
        }

        init?(_ bytes: [UInt8]) {
            let fields = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard fields.count >= 4, fields[1].count == 5, let argc = Int(fields[3]), argc >= 1, fields.count >= 4 + argc else { return nil }
            detached = fields[0] == "1"
            present = fields[1].map { $0 == "1" }
            executable = fields[2]
            argv = Array(fields[4..<(4 + argc)])
            environment = fields[(4 + argc)...].filter { !$0.isEmpty }
        }
    }

    /// The launcher's whole life (`kiln __launcher`): serves requests on fd 3 until it closes.
    /// `other` answers requests that are not launches (`request(_:)`), given their fields.
    public static func serve(socket: Int32 = 3, other: ([String]) -> String = { _ in "unknown request" }) -> Int32 {
        _ = fcntl(socket, F_SETFD, FD_CLOEXEC)
        // SIGCHLD blocked here (children unblock everything before exec), seen on a signalfd.
        let signals = kiln_sigchld_fd()
        guard signals >= 0 else { return 1 }
        // The status pipes' write ends by child pid.
        var statusPipes: [pid_t: Int32] = [:]
        var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0), pollfd(fd: signals, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return 1
            }
            if fds[1].revents != 0 {
                kiln_drain_fd(signals)
                reapChildren(&statusPipes)
            }
            if fds[0].revents != 0 {
                let message: (bytes: [UInt8], descriptors: [Int32])
                do { message = try UnixSocket.receiveMessage(socket, capacity: 1 << 16, maxDescriptors: 5) } catch {
                    if errno == EINTR || errno == EAGAIN { continue }
                    return 1
                }
                if message.bytes.isEmpty && message.descriptors.isEmpty { return 0 } // the service has ended
                if let kind = message.bytes.first, kind != UInt8(ascii: "0") && kind != UInt8(ascii: "1") {
                    message.descriptors.forEach { close($0) }
                    let fields = message.bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
                    do { try UnixSocket.sendMessage(socket, Array(other(fields).utf8), descriptors: []) } catch {}
                    continue
                }
                let reply = launch(message.bytes, descriptors: message.descriptors, statusPipes: &statusPipes)
                message.descriptors.forEach { close($0) }
                do { try UnixSocket.sendMessage(socket, Array(reply.text.utf8), descriptors: reply.descriptors) } catch {}
                reply.descriptors.forEach { close($0) }
            }
        }
    }

    private static func launch(_ bytes: [UInt8], descriptors: [Int32], statusPipes: inout [pid_t: Int32]) -> (text: String, descriptors: [Int32]) {
        guard let request = Launch(bytes), descriptors.count == request.present.filter({ $0 }).count else {
            return ("malformed launch request", [])
        }
        var given = descriptors.makeIterator()
        let slots = request.present.map { $0 ? given.next()! : -1 }
        var status: [Int32] = [-1, -1]
        guard kiln_pipe_cloexec(&status) == 0 else { return ("\(Errno.current("pipe2"))", []) }
        let spawned: SpawnedVMM
        do {
            spawned = try LocalSpawner().spawn(executable: request.executable, argv: request.argv, environment: request.environment,
                                               stdio: Array(slots[0..<3]), control: Array(slots[3..<5]), detached: request.detached)
        } catch {
            close(status[0]); close(status[1])
            return (error.description, [])
        }
        statusPipes[spawned.pid] = status[1]
        return ("ok \(spawned.pid)", [spawned.pidfd, spawned.release, status[0]])
    }

    /// Reaps every child that has ended and tells its status pipe how.
    private static func reapChildren(_ statusPipes: inout [pid_t: Int32]) {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid < 0 && errno == EINTR { continue }
            guard pid > 0 else { return }
            if let pipe = statusPipes.removeValue(forKey: pid) {
                _ = withUnsafeBytes(of: &status) { write(pipe, $0.baseAddress, 4) }
                close(pipe)
            }
        }
    }
}
