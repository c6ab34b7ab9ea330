import Glibc
import KilnTestSupport
import Testing

/// Seccomp on `kiln boot`: every thread of a running VMM is filtered, and a system call outside
/// a thread's policy ends Kiln with SIGSYS. The forbidden calls come from a hook compiled only
/// into debug builds (KILN_TEST_FORBIDDEN_SYSCALL=KIND: that thread calls getppid right after
/// installing its filter), so those runs end before the guest has booted.
@Suite(.blocking) struct SeccompBootTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    /// Runs `kiln boot` with the hook aimed at `kind` and returns the exit status and stderr.
    func forbiddenCall(in kind: String, extra: [String] = [], environment: [String: String] = [:]) throws -> (Int32, String) {
        var env = environment
        env["KILN_TEST_FORBIDDEN_SYSCALL"] = kind
        let kiln = try KilnProcess(["boot"] + extra, environment: env)
        let status = try kiln.wait(seconds: 120)
        #expect(!kiln.output.contains("KILN-INIT-READY"), "the guest must not get far")
        return (status, kiln.errorOutput)
    }

    @Test(arguments: ["loader", "vcpu", "console", "main"])
    func forbiddenCallKillsKilnWithSIGSYS(_ kind: String) throws {
        let (status, stderr) = try forbiddenCall(in: kind)
        #expect(status == 128 + SIGSYS, "\(kind): status \(status), stderr: \(stderr)")
    }

    @Test func forbiddenCallOnTheDeviceThreadKillsKilnWithSIGSYS() throws {
        // The device thread exists only with a virtio device.
        let dir = "/tmp/kiln-seccomp-test-\(getpid())"
        mkdir(dir, 0o755)
        defer { unlink("\(dir)/v.sock"); rmdir(dir) }
        let (status, stderr) = try forbiddenCall(in: "devices", extra: ["--vsock", "\(dir)/v.sock"])
        #expect(status == 128 + SIGSYS, "status \(status), stderr: \(stderr)")
    }

    @Test func forbiddenCallOnTheControlThreadKillsKilnWithSIGSYS() throws {
        // kiln-control exists with a control socket (or, jailed, a command channel).
        let dir = "/tmp/kiln-seccomp-control-\(getpid())"
        mkdir(dir, 0o755)
        defer { unlink("\(dir)/control.sock"); rmdir(dir) }
        let (status, stderr) = try forbiddenCall(in: "control", extra: ["--no-jail", "--control", "\(dir)/control.sock"])
        #expect(status == 128 + SIGSYS, "status \(status), stderr: \(stderr)")
    }

    @Test func trapModeNamesTheThreadAndTheCall() throws {
        let (status, stderr) = try forbiddenCall(in: "vcpu", environment: ["KILN_SECCOMP": "trap"])
        #expect(status == 159)
        #expect(stderr.contains("kiln: seccomp: thread 'vcpu' made a forbidden system call: getppid (110)"), "\(stderr)")
    }

    @Test func noSeccompSaysSoLoudly() throws {
        let kiln = try KilnProcess(["boot", "--no-seccomp", "--kernel", "/nonexistent/vmlinux"])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 1)
        #expect(kiln.errorOutput.contains("WARNING: --no-seccomp: this VMM runs WITHOUT seccomp filters"), "\(kiln.errorOutput)")
    }

    @Test func badSeccompModeIsAUsageError() throws {
        let kiln = try KilnProcess(["boot"], environment: ["KILN_SECCOMP": "off"])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 2)
        #expect(kiln.errorOutput.hasPrefix("kiln: KILN_SECCOMP must be kill, trap or log, got 'off'"), "\(kiln.errorOutput)")
    }

    /// One boot with a virtio device (one vCPU: SMP guests are unreliable on emulated-CPL0 hosts,
    /// docs/host-kvm.md; every vCPU thread runs the same code): once the guest is up, every thread in
    /// /proc/PID/task has seccomp mode 2 (filter) and exactly one filter, and the threads are
    /// exactly Kiln's own (no runtime or Dispatch threads) plus KVM's NX huge page recovery worker,
    /// a kernel task that KVM starts in the VMM's thread group and that never runs user code
    /// (it inherits the filter of the vCPU that started it all the same).
    @Test func everyThreadOfARunningVMIsFiltered() throws {
        let dir = "/tmp/kiln-seccomp-threads-\(getpid())"
        mkdir(dir, 0o755)
        defer { unlink("\(dir)/v.sock"); rmdir(dir) }
        let kiln = try KilnProcess(["boot", "--vsock", "\(dir)/v.sock"])
        try kiln.waitForLine("KILN-INIT-READY", seconds: BootCommandTests.bootSeconds)

        // As root the VMM runs jailed in a child of the `kiln` supervisor: look at that process.
        var vmm = kiln.pid
        if geteuid() == 0, let child = try readText("/proc/\(kiln.pid)/task/\(kiln.pid)/children")
            .split(separator: " ").first.flatMap({ pid_t($0.trimmingCharacters(in: " \n")) }) {
            vmm = child
        }
        var threads: [String: (seccomp: String?, filters: String?)] = [:]
        for tid in try listDirectory("/proc/\(vmm)/task") {
            let status = try readText("/proc/\(vmm)/task/\(tid)/status")
            func field(_ name: String) -> String? {
                status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                    .map { $0.dropFirst(name.count + 1).trimmingCharacters(in: " \t") }
            }
            threads[field("Name") ?? tid] = (field("Seccomp"), field("Seccomp_filters"))
        }
        // The jailed VMM is the kiln-vmm executable.
        let main = vmm == kiln.pid ? "kiln" : "kiln-vmm"
        #expect(Set(threads.keys) == [main, "kiln-vcpu0", "kiln-devices", "kiln-console", "kvm-nx-lpage-re"],
                "\(threads)")
        for (name, t) in threads {
            #expect(t.seccomp == "2", "\(name) is not in seccomp filter mode: \(t)")
            #expect(t.filters == "1", "\(name) has \(t.filters ?? "?") filters")
        }
        kiln.send("reboot -f\n")
        #expect(try kiln.wait(seconds: 120) == 0, "stderr: \(kiln.errorOutput)")
    }

    /// The console on a terminal: Ctrl-A x stops the VM from the console thread, and the main
    /// thread restores the terminal (TCGETS/TCSETS) under its filter. No boot needed.
    @Test func ctrlAXOnATerminalEndsKilnCleanly() throws {
        // posix_openpt and friends are hidden from Swift: /dev/ptmx with TIOCSPTLCK and TIOCGPTN.
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY)
        try #require(master >= 0)
        defer { close(master) }
        var unlock: Int32 = 0, number: UInt32 = 0
        #expect(ioctl(master, UInt(0x4004_5431), &unlock) == 0)  // TIOCSPTLCK
        #expect(ioctl(master, UInt(0x8004_5430), &number) == 0)  // TIOCGPTN
        let slave = "/dev/pts/\(number)"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, slave, O_RDWR, 0)
        posix_spawn_file_actions_adddup2(&actions, 0, 1)
        posix_spawn_file_actions_adddup2(&actions, 0, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(KilnProcess.binary), strdup("boot"), nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, KilnProcess.binary, &actions, nil, argv, environ) == 0)

        func isRaw() -> Bool {
            var t = termios()
            return tcgetattr(master, &t) == 0 && t.c_lflag & tcflag_t(ICANON) == 0
        }
        var sent = false, exited = false, status: Int32 = 0, output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var started = timespec(), now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &started)
        while !exited {
            clock_gettime(CLOCK_MONOTONIC, &now)
            if now.tv_sec - started.tv_sec > 120 { break }
            var p = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            // Drain the output, or the guest's writes would block; after a hang-up, just wait.
            let n = poll(&p, 1, 100) > 0 ? read(master, &buffer, buffer.count) : 0
            if n > 0 { output += buffer[0..<n] } else { usleep(10_000) }
            if !sent && isRaw() {
                var keys: [UInt8] = [0x01, UInt8(ascii: "x")]
                sent = write(master, &keys, 2) == 2
            }
            exited = waitpid(pid, &status, WNOHANG) == pid
        }
        if !exited { kill(pid, SIGKILL); waitpid(pid, &status, 0) }
        #expect(exited, "kiln did not end within 120 s of Ctrl-A x")
        #expect(sent, "kiln never put the terminal in raw mode")
        #expect(status == 0, "wait status \(status) (signal \(status & 0x7F)): \(String(decoding: output.suffix(500), as: UTF8.self))")
        #expect(!isRaw(), "the terminal is restored")
    }

    func listDirectory(_ path: String) throws -> [String] {
        guard access(path, F_OK) == 0 else { throw POSIXFailure(what: "opendir \(path)") }
        return TestFiles.list(path)
    }

    func readText(_ path: String) throws -> String {
        guard let text = TestFiles.read(path) else { throw POSIXFailure(what: "open \(path)") }
        return text
    }

    struct POSIXFailure: Error { let what: String }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
