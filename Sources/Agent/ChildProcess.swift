import AgentProtocol
import CLinux
import Glibc

/// One process started by Exec or Spawn: its descriptors, flow-control windows, the stream it is
/// attached to (none while a kept process is detached) and what is known of its end.
final class ChildProcess {
    /// The agent's own key for it: unlike a pid, never reused.
    let id: UInt64
    let pid: pid_t
    /// The attached stream and its connection; stream 0 and no connection while detached.
    var stream: UInt32
    weak var connection: Connection?
    /// Spawn's keep flag: detach instead of dying when the connection closes.
    let keep: Bool
    let tag: String
    /// What ListProcesses reports: the request as the host sent it.
    let request: Exec
    /// Write end of the stdin pipe, or the PTY master (also `output`).
    var input: Int32
    /// Read end of the stdout pipe, or the PTY master.
    var output: Int32
    /// Read end of the stderr pipe; -1 with a PTY.
    var errorOutput: Int32
    let pty: Bool

    var stdoutWindow = SendWindow()
    var stderrWindow = SendWindow()
    var stdinWindow = ReceiveWindow()
    /// Stdin bytes received and not yet written to the process.
    var pendingInput: [UInt8] = []
    var pendingInputStart = 0
    var stdinCloseRequested = false

    /// Output read while detached, at most one window per channel, sent on the next Attach.
    var bufferedStdout: [UInt8] = []
    var bufferedStderr: [UInt8] = []

    var outputOpen = true
    var errorOutputOpen: Bool
    /// The wait status once reaped.
    var waitStatus: Int32?
    var deadline: UInt64?
    var timedOut = false
    /// The command's own cgroup (CommandCgroups), nil when the guest has none.
    let cgroup: String?

    init(id: UInt64, stream: UInt32, pid: pid_t, spawn: Spawn, input: Int32, output: Int32, errorOutput: Int32, pty: Bool,
         deadline: UInt64?, cgroup: String?) {
        self.id = id
        self.stream = stream
        self.pid = pid
        keep = spawn.flags.contains(.keep)
        tag = spawn.tag
        request = spawn.exec
        self.input = input
        self.output = output
        self.errorOutput = errorOutput
        self.pty = pty
        errorOutputOpen = errorOutput >= 0
        self.deadline = deadline
        self.cgroup = cgroup
    }

    /// Exited, every pipe at end of file: all that is left is to report the Exit.
    var finished: Bool { waitStatus != nil && !outputOpen && !errorOutputOpen }

    /// The connection closed: keep running, buffering output up to one window per channel.
    func detach() {
        connection = nil
        stream = 0
        stdoutWindow = SendWindow(initial: Wire.initialWindow - min(Wire.initialWindow, UInt32(clamping: bufferedStdout.count)))
        stderrWindow = SendWindow(initial: Wire.initialWindow - min(Wire.initialWindow, UInt32(clamping: bufferedStderr.count)))
    }

    /// Attach: the stream starts with fresh windows, as an Exec stream does.
    func attach(to connection: Connection, stream: UInt32) {
        self.connection = connection
        self.stream = stream
        stdoutWindow = SendWindow()
        stderrWindow = SendWindow()
        stdinWindow = ReceiveWindow()
    }

    var summary: ProcessSummary {
        var flags: ProcessSummary.Flags = []
        if pty { flags.insert(.pty) }
        if keep { flags.insert(.kept) }
        if connection != nil { flags.insert(.attached) }
        if waitStatus != nil { flags.insert(.exited) }
        return ProcessSummary(pid: UInt32(pid), tag: tag, argv: request.argv, environment: request.environment,
                              workingDirectory: request.workingDirectory, flags: flags)
    }
    var hasPendingInput: Bool { pendingInputStart < pendingInput.count }

    /// Sends `signal` to the process group (the process leads its own session), or to the
    /// process alone if the group is gone.
    /// SIGKILL also goes to the whole cgroup: descendants that left the group (a fork bomb's
    /// subshells, a daemon) die with the command.
    /// Once it is reaped its pid may be reused: only the group (whose id the kernel does not
    /// reuse while members remain) and the cgroup are signalled then.
    func send(_ signal: Int32) {
        if signal == SIGKILL, let cgroup { CommandCgroups.kill(cgroup) }
        if kill(-pid, signal) != 0 && waitStatus == nil { _ = kill(pid, signal) }
    }

    var exitStatus: ExitStatus {
        let status = waitStatus ?? 0
        let signal = status & 0x7F
        if signal == 0 {
            return ExitStatus(.exited(code: (status >> 8) & 0xFF), timedOut: timedOut)
        }
        return ExitStatus(.signaled(signal: signal), coreDumped: status & 0x80 != 0, timedOut: timedOut)
    }

    func closeInput() {
        if input >= 0 && input != output { Glibc.close(input) }
        input = -1
    }

    func closeAll() {
        closeInput()
        if output >= 0 { Glibc.close(output) }
        if errorOutput >= 0 { Glibc.close(errorOutput) }
        output = -1
        errorOutput = -1
        outputOpen = false
        errorOutputOpen = false
    }

    /// Starts `exec` as described in docs/agent-protocol.md ("Processes").
    /// `environment` is what the process gets (the host's plus what the agent adds).
    static func start(_ spawn: Spawn, environment: [String], id: UInt64, stream: UInt32, setIDs: Bool, now: UInt64,
                      cgroups: CommandCgroups? = nil, inGuest: Bool = false) -> Result<ChildProcess, Failure> {
        var exec = spawn.exec
        exec.environment = environment
        guard !exec.argv.isEmpty else { return .failure(Failure(errno: EINVAL, message: "empty argv")) }
        let strings = exec.argv + exec.environment + [exec.workingDirectory]
        guard !strings.contains(where: { $0.utf8.contains(0) }) else {
            return .failure(Failure(errno: EINVAL, message: "a string contains a NUL byte"))
        }
        if !setIDs && (exec.uid != 0 || exec.gid != 0 || !exec.groups.isEmpty) && (exec.uid != getuid() || exec.gid != getgid()) {
            return .failure(Failure(errno: EPERM, message: "the agent cannot change user ids"))
        }
        let command = exec.argv[0]
        guard let path = ExecutablePath.resolve(command, environment: exec.environment) else {
            return .failure(Failure(errno: ENOENT, message: "\(command): command not found"))
        }

        // Its cgroup first: a command that cannot be limited does not run.
        var cgroup: (path: String, procs: Int32)?
        if let cgroups {
            let pids = spawn.limits.map { $0.pids == 0 ? CommandCgroups.defaultPids : $0.pids } ?? CommandCgroups.defaultPids
            switch cgroups.create(id, pids: pids) {
            case .success(let c): cgroup = c
            case .failure(let f): return .failure(f)
            }
        }
        defer { if let cgroup { Glibc.close(cgroup.procs) } }

        // Descriptors for the child (given to it as 0, 1, 2) and ours.
        var childFDs: [Int32] = []
        var input: Int32 = -1, output: Int32 = -1, errorOutput: Int32 = -1
        var ptyMaster: Int32 = -1
        func cleanup() {
            for fd in childFDs + [input, output, errorOutput, ptyMaster] where fd >= 0 { Glibc.close(fd) }
            if let cgroup { _ = rmdir(cgroup.path) }
        }

        if let size = exec.pty {
            var slave = [CChar](repeating: 0, count: 128)
            if kiln_open_pty(&ptyMaster, &slave, slave.count, size.rows, size.columns) != 0 {
                return .failure(Failure(errno: errno, message: "cannot open a pseudo-terminal: \(String(cString: strerror(errno)))"))
            }
            let slaveFD = Glibc.open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC)
            if slaveFD < 0 {
                let e = errno
                cleanup()
                return .failure(Failure(errno: e, message: "cannot open the terminal: \(String(cString: strerror(e)))"))
            }
            childFDs = [slaveFD, slaveFD, slaveFD]
            input = ptyMaster; output = ptyMaster
        } else {
            var pipes: [[Int32]] = []
            for _ in 0..<3 {
                var fds: [Int32] = [-1, -1]
                if kiln_pipe2(&fds, O_CLOEXEC) != 0 {
                    let e = errno
                    for p in pipes { Glibc.close(p[0]); Glibc.close(p[1]) }
                    if let cgroup { _ = rmdir(cgroup.path) }
                    return .failure(Failure(errno: e, message: "pipe: \(String(cString: strerror(e)))"))
                }
                pipes.append(fds)
            }
            childFDs = [pipes[0][0], pipes[1][1], pipes[2][1]]
            input = pipes[0][1]; output = pipes[1][0]; errorOutput = pipes[2][0]
            for fd in [input, output, errorOutput] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
            // Bigger pipes mean fewer wakeups per MiB of output.
            _ = fcntl(output, 1031 /* F_SETPIPE_SZ */, 1 << 20)
        }

        let pid = withCStrings(exec.argv) { argv in
            withCStrings(exec.environment) { envp in
                exec.groups.map { gid_t($0) }.withUnsafeBufferPointer { groups in
                    var request = kiln_spawn_request()
                    request.argv = argv
                    request.envp = envp
                    request.stdio = (childFDs[0], childFDs[1], childFDs[2])
                    request.controlling_tty = exec.pty == nil ? 0 : 1
                    request.set_ids = setIDs ? 1 : 0
                    request.uid = exec.uid
                    request.gid = exec.gid
                    request.groups = groups.baseAddress
                    request.group_count = groups.count
                    request.cgroup_procs = cgroup?.procs ?? -1
                    let openFiles = ChildProcess.openFiles(spawn.limits, inGuest: inGuest)
                    request.open_files_soft = openFiles.soft
                    request.open_files_hard = openFiles.hard
                    return path.withCString { p in
                        exec.workingDirectory.withCString { cwd in
                            request.path = p
                            request.cwd = cwd
                            let pid = kiln_spawn(&request)
                            let step = request.failed_step.map { String(cString: $0) } ?? "spawn"
                            return pid >= 0 ? Result<pid_t, Failure>.success(pid) : .failure(ChildProcess.failure(errno, step: step, exec: exec, path: path))
                        }
                    }
                }
            }
        }
        for fd in Set(childFDs) { Glibc.close(fd) }
        childFDs = []
        switch pid {
        case .failure(let f):
            cleanup()
            return .failure(f)
        case .success(let pid):
            let deadline = exec.timeoutMillis == 0 ? nil : now + UInt64(exec.timeoutMillis)
            return .success(ChildProcess(id: id, stream: stream, pid: pid, spawn: spawn, input: input, output: output,
                                         errorOutput: errorOutput, pty: exec.pty != nil, deadline: deadline,
                                         cgroup: cgroup?.path))
        }
    }

    /// The default RLIMIT_NOFILE of a command in the guest, soft and hard (Linux's own defaults,
    /// set rather than inherited: whatever the agent's own limit, a command starts with these).
    static let defaultOpenFiles: (soft: UInt64, hard: UInt64) = (1024, 4096)

    /// The command's RLIMIT_NOFILE: `Limits.openFiles` for both, else the default in a guest;
    /// (0, 0) leaves the agent's (outside a guest, `--listen`, without a limit).
    static func openFiles(_ limits: Limits?, inGuest: Bool) -> (soft: UInt64, hard: UInt64) {
        if let n = limits?.openFiles, n != 0 { return (UInt64(n), UInt64(n)) }
        return inGuest ? defaultOpenFiles : (0, 0)
    }

    static func failure(_ code: Int32, step: String, exec: Exec, path: String) -> Failure {
        let text = String(cString: strerror(code))
        switch step {
        case "execve":
            if code == ENOENT { return Failure(errno: code, message: "\(exec.argv[0]): command not found") }
            return Failure(errno: code, message: "cannot run \(path): \(text)")
        case "chdir": return Failure(errno: code, message: "cannot change to directory \(exec.workingDirectory): \(text)")
        case "setrlimit": return Failure(errno: code, message: "cannot set the open-files limit: \(text)")
        case "setgroups", "setgid", "setuid": return Failure(errno: code, message: "\(step)(\(exec.uid):\(exec.gid)): \(text)")
        default: return Failure(errno: code, message: "\(step): \(text)")
        }
    }
}

/// Finds a command in the PATH of the environment it will run with, as execvpe would.
enum ExecutablePath {
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    static func resolve(_ command: String, environment: [String]) -> String? {
        if command.contains("/") { return command }
        guard !command.isEmpty else { return nil }
        let path = environment.last(where: { $0.hasPrefix("PATH=") }).map { String($0.dropFirst(5)) } ?? defaultPath
        for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + command
            var st = stat()
            if stat(candidate, &st) == 0, st.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// Calls `body` with a NULL-terminated C array of the strings.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
