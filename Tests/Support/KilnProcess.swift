import Glibc

/// The `kiln` executable built next to the test bundle, run as a user would run it:
/// stdin, stdout and stderr on pipes, with deadlines on everything.
public final class KilnProcess {
    public let pid: pid_t
    private var stdinFD: Int32
    private let stdoutFD: Int32
    private let stderrFD: Int32
    public private(set) var stdout: [UInt8] = []
    public private(set) var stderr: [UInt8] = []
    private var status: Int32?

    /// The kiln binary beside the running test executable.
    public static var binary: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return dir + "/kiln"
    }

    /// Runs `kiln arguments`, or `executable arguments` (found on PATH) to wrap kiln in another
    /// program, e.g. `ip netns exec NS <binary> boot ...`.
    public init(_ arguments: [String], environment: [String: String] = [:], executable: String? = nil) throws {
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw SpawnError(code: errno) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        for fd in inPipe + outPipe + errPipe { posix_spawn_file_actions_addclose(&actions, fd) }
        let program = executable ?? KilnProcess.binary
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            e += 1
        }
        for (k, v) in environment { env[k] = v }
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, program, &actions, nil, argv, envp)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else { throw SpawnError(code: rc) }
        self.pid = pid
        stdinFD = inPipe[1]
        stdoutFD = outPipe[0]
        stderrFD = errPipe[0]
        signal(SIGPIPE, SIG_IGN)
    }

    deinit {
        if status == nil { kill(pid, SIGKILL); _ = try? wait(seconds: 10) }
        if stdinFD >= 0 { close(stdinFD) }
        close(stdoutFD); close(stderrFD)
    }

    public struct SpawnError: Error { public let code: Int32 }
    public struct Timeout: Error, CustomStringConvertible {
        public let waitingFor: String
        public let output: String
        public var description: String { "timed out waiting for \(waitingFor); output so far:\n\(output)" }
    }

    /// The process's children, across all its threads (a jailed VMM is the child of the thread
    /// that started it, and each thread's children are listed apart).
    public var children: [pid_t] {
        TestFiles.list("/proc/\(pid)/task").flatMap { task in
            (TestFiles.read("/proc/\(pid)/task/\(task)/children") ?? "").split(separator: " ").compactMap { pid_t($0) }
        }
    }

    public func send(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(stdinFD, &bytes, bytes.count)
    }

    /// Writes `bytes` to kiln's stdin on a thread of its own, then closes stdin, so that a
    /// large input cannot deadlock against output this side has not read yet.
    public func sendInBackground(_ bytes: [UInt8]) {
        final class Job { let fd: Int32; let bytes: [UInt8]; init(_ fd: Int32, _ bytes: [UInt8]) { self.fd = fd; self.bytes = bytes } }
        let job = Unmanaged.passRetained(Job(stdinFD, bytes)).toOpaque()
        stdinFD = -1
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let job = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
            var offset = 0
            while offset < job.bytes.count {
                let n = job.bytes.withUnsafeBytes { write(job.fd, $0.baseAddress! + offset, job.bytes.count - offset) }
                if n <= 0 { break }
                offset += n
            }
            close(job.fd)
            return nil
        }, job)
        if rc == 0 { pthread_detach(thread) }
    }

    public func closeInput() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
    }

    public var output: String { String(decoding: stdout, as: UTF8.self) }
    public var errorOutput: String { String(decoding: stderr, as: UTF8.self) }

    /// Lines of stdout, split at \n, \r\n (one Character in Swift) or \r.
    public var outputLines: [String] {
        output.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map(String.init)
    }

    /// Reads output until `done` holds or `seconds` pass.
    public func waitFor(_ what: String, seconds: Double, until done: (KilnProcess) -> Bool) throws {
        let deadline = now() + seconds
        while !done(self) {
            let left = deadline - now()
            if left <= 0 { throw Timeout(waitingFor: what, output: output + errorOutput) }
            if !pump(timeoutMS: Int32(min(left, 1) * 1000)) && status != nil && !done(self) {
                throw Timeout(waitingFor: "\(what) (kiln exited with \(status!))", output: output + errorOutput)
            }
        }
    }

    /// Waits for a stdout line exactly equal to `line`.
    public func waitForLine(_ line: String, seconds: Double) throws {
        try waitFor("the line \"\(line)\"", seconds: seconds) { $0.outputLines.contains(line) }
    }

    /// Waits for the process to exit and returns its exit status (128+N for signal N).
    @discardableResult
    public func wait(seconds: Double) throws -> Int32 {
        let deadline = now() + seconds
        while status == nil {
            if now() > deadline {
                kill(pid, SIGKILL)
                throw Timeout(waitingFor: "kiln to exit", output: output + errorOutput)
            }
            _ = pump(timeoutMS: 200)
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                status = (st & 0x7F) == 0 ? (st >> 8) & 0xFF : 128 + (st & 0x7F)
                while pump(timeoutMS: 0) {}
            }
        }
        return status!
    }

    /// Moves available bytes from the pipes into `stdout`/`stderr`; false when nothing was read.
    private func pump(timeoutMS: Int32) -> Bool {
        var fds = [pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)]
        guard poll(&fds, 2, timeoutMS) > 0 else { return false }
        var got = false
        var buffer = [UInt8](repeating: 0, count: 65536)
        for (i, p) in fds.enumerated() where p.revents & Int16(POLLIN | POLLHUP) != 0 {
            let n = read(p.fd, &buffer, buffer.count)
            if n > 0 {
                got = true
                if i == 0 { stdout += buffer[0..<n] } else { stderr += buffer[0..<n] }
            }
        }
        if !got {
            var st: Int32 = 0
            if status == nil, waitpid(pid, &st, WNOHANG) == pid {
                status = (st & 0x7F) == 0 ? (st >> 8) & 0xFF : 128 + (st & 0x7F)
            }
        }
        return got
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
