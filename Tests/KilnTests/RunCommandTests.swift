import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing
import VMM

/// `kiln run` end to end: each test boots one sandbox from Kiln's default image (about 20-40 s
/// here, where guest kernel mode is emulated).
@Suite(.blocking) struct RunCommandTests {
    static let seconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    @Test func outputGoesToTheRightStreamsAndTheExitCodeIsKilns() throws {
        let kiln = try KilnProcess(["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        kiln.closeInput()
        let status = try kiln.wait(seconds: Self.seconds)
        #expect(kiln.output == "out\n")
        #expect(kiln.errorOutput == "err\n")
        #expect(status == 3)
    }

    /// A guest that stops answering (here: its VMM frozen with SIGSTOP, as a fork bomb can wedge
    /// the guest) cannot keep `--timeout` from ending the run: the host stops the VM itself.
    /// The timeout leaves a loaded host time to start the guest shell (seconds here) before "started".
    @Test func theTimeoutHoldsWhenTheGuestNoLongerAnswers() throws {
        let kiln = try KilnProcess(["run", "--timeout", "15", "--", "sh", "-c", "echo started; sleep 600"])
        kiln.closeInput()
        try kiln.waitForLine("started", seconds: Self.seconds)
        // The jailed VMM is a child process of kiln (root; the tests run as root).
        let vmm = kiln.children
        #expect(!vmm.isEmpty, "kiln run has no VMM child")
        for pid in vmm { kill(pid, SIGSTOP) }
        let status = try kiln.wait(seconds: 120)
        #expect(status == 124)
        #expect(kiln.errorOutput.contains("the guest did not respond"))
        for pid in vmm { #expect(kill(pid, 0) != 0, "the frozen VMM \(pid) is still there") }
    }

    @Test func stdinOfOneMebibytePassesThroughCatUnchanged() throws {
        var input = [UInt8](repeating: 0, count: 1 << 20)
        var rng = SystemRandomNumberGenerator()
        for i in input.indices { input[i] = UInt8.random(in: 0...255, using: &rng) }
        let kiln = try KilnProcess(["run", "-i", "--", "cat"])
        kiln.sendInBackground(input)
        let status = try kiln.wait(seconds: Self.seconds)
        #expect(status == 0, "stderr: \(kiln.errorOutput)")
        #expect(kiln.stdout.count == input.count)
        #expect(sha256Hex(kiln.stdout) == sha256Hex(input))
    }

    @Test func aMissingCommandExits127WithOneLine() throws {
        let kiln = try KilnProcess(["run", "--", "no-such-command-kiln", "arg"])
        kiln.closeInput()
        let status = try kiln.wait(seconds: Self.seconds)
        #expect(status == 127)
        #expect(kiln.errorOutput == "kiln: no-such-command-kiln: command not found\n")
    }

    @Test func aMissingImageIsOneClearLineWithoutABoot() throws {
        let kiln = try KilnProcess(["run", "--image", "no-such-image", "--", "true"])
        kiln.closeInput()
        let status = try kiln.wait(seconds: 60)
        #expect(status == 1)
        #expect(kiln.errorOutput.hasPrefix("kiln: no image named 'no-such-image'"))
        #expect(kiln.errorOutput.split(separator: "\n").count == 1)
    }

    @Test func noJailRunsTheVMMInKilnsOwnProcessAndSaysSo() throws {
        let kiln = try KilnProcess(["run", "--no-jail", "--", "sh", "-c", "echo unjailed"])
        kiln.closeInput()
        let status = try kiln.wait(seconds: Self.seconds)
        #expect(status == 0, "stderr: \(kiln.errorOutput)")
        #expect(kiln.output == "unjailed\n")
        if geteuid() == 0 {
            #expect(kiln.errorOutput.hasPrefix("kiln: warning: --no-jail: the VMM runs as root inside this process"), "\(kiln.errorOutput)")
        }
    }

    @Test func whatAKilledKilnRunLeftBehindIsSweptByTheNextRun() throws {
        // SIGKILL gives kiln run no chance to clean up: its VMM dies with it (parent-death
        // signal), but its runtime directory, jail directory and cgroup stay until the next run.
        let killed = try KilnProcess(["run", "--", "sh", "-c", "echo started; sleep 300"])
        killed.closeInput()
        try killed.waitForLine("started", seconds: Self.seconds)
        let mine = "-\(killed.pid)-"
        let runtime = TestFiles.list("/run/kiln").filter { $0.hasPrefix("sandbox-") && $0.contains(mine) }
        let jails = TestFiles.list("/run/kiln/jail").filter { $0.hasPrefix("\(killed.pid)-") }
        if geteuid() == 0 {
            #expect(runtime.count == 1, "\(TestFiles.list("/run/kiln"))")
            #expect(jails.count == 1, "\(TestFiles.list("/run/kiln/jail"))")
        }
        kill(killed.pid, SIGKILL)
        #expect(try killed.wait(seconds: 30) == 128 + SIGKILL)

        let next = try KilnProcess(["run", "--", "true"])
        next.closeInput()
        #expect(try next.wait(seconds: Self.seconds) == 0, "\(next.errorOutput)")
        for name in runtime { #expect(access("/run/kiln/\(name)", F_OK) != 0, "\(name) was swept") }
        for name in jails { #expect(access("/run/kiln/jail/\(name)", F_OK) != 0, "jail \(name) was swept") }
    }

    @Test func kilnRunsOwnThreadsAreFilteredOnceTheJailedVMMRuns() throws {
        guard geteuid() == 0 else { return } // the supervisor filter goes with the jail (root)
        let kiln = try KilnProcess(["run", "--", "sh", "-c", "echo started; sleep 2; echo done"])
        kiln.closeInput()
        try kiln.waitForLine("started", seconds: Self.seconds)
        let threads = TestFiles.list("/proc/\(kiln.pid)/task")
        #expect(threads.count >= 3)
        for tid in threads {
            let comm = TestFiles.read("/proc/\(kiln.pid)/task/\(tid)/comm") ?? "?"
            #expect(TestFiles.procStatus(kiln.pid, task: tid)["Seccomp"] == "2", "kiln run's thread \(comm) is not filtered")
        }
        #expect(try kiln.wait(seconds: Self.seconds) == 0, "\(kiln.errorOutput)")
        #expect(kiln.output == "started\ndone\n")

        // A system call outside the policy ends kiln run with SIGSYS (debug-only hook).
        let hooked = try KilnProcess(["run", "--", "true"], environment: ["KILN_TEST_FORBIDDEN_SYSCALL": "supervisor"])
        hooked.closeInput()
        #expect(try hooked.wait(seconds: Self.seconds) == 128 + SIGSYS, "\(hooked.errorOutput)")
    }

    @Test func usageErrorsExit2() throws {
        let kiln = try KilnProcess(["run", "--memory", "lots", "--", "true"])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 2)
        #expect(kiln.errorOutput.hasPrefix("kiln: --memory needs a whole number"))
    }
}

/// The library API against one sandbox, reused for many commands (one boot).
@Suite struct SandboxTests {
    static let kernel = "/var/cache/kiln/kernel/vmlinux"
    static let image = "/var/cache/kiln/images/default.ext4"

    func run(_ sandbox: Sandbox, _ argv: [String], cwd: String = "", env: [String] = ["PATH=/bin:/sbin:/usr/bin"],
             timeoutMillis: UInt32 = 0) async throws -> (stdout: String, stderr: String, status: AgentProtocol.ExitStatus) {
        let p = try await sandbox.agent.exec(Exec(argv: argv, environment: env, workingDirectory: cwd, timeoutMillis: timeoutMillis))
        p.closeStdin()
        let r = try await p.collect()
        return (String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self), r.status)
    }

    @Test func oneSandboxServesCommandsFilesAndSignals() async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let imageBefore = try fileDigest(Self.image)
        var config = Sandbox.Configuration(kernelPath: Self.kernel, imagePath: Self.image)
        config.runtimeDirectory = "/tmp/kiln-sandbox-tests-\(getpid())"
        // A cold boot (~20 s alone here) shares two cores with the other suites' VMs in CI.
        config.bootTimeout = 1200
        let sandbox = try await Sandbox.start(config)

        // As root (CI), the sandbox's VMM is a jailed process: its own user, no capabilities,
        // no_new_privs, every thread filtered, its own PID and network namespaces.
        let vmm = sandbox.vmmProcess
        if geteuid() == 0 {
            #expect(vmm != nil, "as root the VMM runs jailed")
        }
        if let vmm {
            let status = TestFiles.procStatus(vmm.pid)
            #expect(status["Uid"]?.hasPrefix("64000\t64000") == true, "\(status)")
            #expect(status["CapEff"] == "0000000000000000")
            #expect(status["NoNewPrivs"] == "1")
            let threads = TestFiles.list("/proc/\(vmm.pid)/task")
            #expect(threads.count >= 3)
            for tid in threads {
                let comm = TestFiles.read("/proc/\(vmm.pid)/task/\(tid)/comm") ?? "?"
                #expect(TestFiles.procStatus(vmm.pid, task: tid)["Seccomp"] == "2", "thread \(comm) is not filtered")
            }
            for ns in ["pid", "net", "mnt"] {
                #expect(TestFiles.link("/proc/\(vmm.pid)/ns/\(ns)") != TestFiles.link("/proc/self/ns/\(ns)"), "\(ns) namespace")
            }
            #expect(access(vmm.jail, F_OK) == 0)
        }

        // Exit codes and signals.
        #expect(try await run(sandbox, ["true"]).status == AgentProtocol.ExitStatus(.exited(code: 0)))
        #expect(try await run(sandbox, ["sh", "-c", "exit 42"]).status == AgentProtocol.ExitStatus(.exited(code: 42)))
        #expect(try await run(sandbox, ["sh", "-c", "kill -9 $$"]).status == AgentProtocol.ExitStatus(.signaled(signal: 9)))

        // Environment, working directory, and the guest's own view of itself.
        let r = try await run(sandbox, ["sh", "-c", "echo $WHO; pwd; hostname; cat /proc/1/comm"], cwd: "/tmp",
                              env: ["PATH=/bin", "WHO=sandbox-user"])
        #expect(r.stdout == "sandbox-user\n/tmp\nkiln\nkiln-agent\n", "\(r)")
        // The host profile's glibc settings reach every process (they keep it off AVX here).
        let tunables = try await run(sandbox, ["sh", "-c", "echo ${GLIBC_TUNABLES:-none}"])
        let expected = HostProfile.detect() == .emulatedCPL0 ? String(HostProfile.glibcTunables.dropFirst("GLIBC_TUNABLES=".count)) : "none"
        #expect(tunables.stdout == expected + "\n")

        // A timeout kills the process and says so.
        let slow = try await run(sandbox, ["sleep", "60"], timeoutMillis: 2000)
        #expect(slow.status == AgentProtocol.ExitStatus(.signaled(signal: 9), timedOut: true))

        // A PTY session sees a terminal.
        let tty = try await sandbox.agent.exec(Exec(argv: ["tty"], environment: ["PATH=/bin:/usr/bin"], pty: WindowSize(rows: 24, columns: 80)))
        let ttyOut = try await tty.collect()
        #expect(String(decoding: ttyOut.stdout, as: UTF8.self).hasPrefix("/dev/pts/"))

        // A missing command is ENOENT (kiln run turns it into 127).
        await #expect(throws: AgentClientError.self) { _ = try await sandbox.agent.exec(Exec(argv: ["no-such-command"], environment: ["PATH=/bin"])) }

        // A file goes in and comes back, mode kept; the write lands in the sandbox's own layer.
        var data = [UInt8](repeating: 0, count: 1 << 20)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        #expect(try await sandbox.agent.writeFile("/root/data.bin", contents: data, mode: 0o600) == UInt64(data.count))
        let (info, back) = try await sandbox.agent.readFile("/root/data.bin")
        #expect(info.mode & 0o7777 == 0o600)
        #expect(sha256Hex(back) == sha256Hex(data))
        let synced = try await run(sandbox, ["sync"])
        #expect(synced.status == AgentProtocol.ExitStatus(.exited(code: 0)))

        // The agent keeps serving after a malformed frame on another connection.
        if let raw = Sandbox.connectToGuestForTests(sandbox) {
            let garbage: [UInt8] = [0, 0, 0, 0, 0x7F, 0, 0, 0, 0, 0, 0, 0]
            _ = garbage.withUnsafeBytes { write(raw.raw, $0.baseAddress, $0.count) }
            var decoder = FrameDecoder(from: .agent)
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { read(raw.raw, $0.baseAddress, $0.count) }
            if n > 0 { decoder.feed(buf[0..<n]) }
            if case .protocolError(let code, _)? = try decoder.next()?.message { #expect(code == 3) } else { Issue.record("no ProtocolError") }
        } else {
            Issue.record("cannot open a second connection to the agent")
        }
        #expect(try await run(sandbox, ["echo", "still-serving"]).stdout == "still-serving\n")

        #expect(sandbox.stop() == .userQuit)
        #expect(access(sandbox.directory, F_OK) != 0, "the sandbox's runtime directory is removed")
        if let vmm {
            #expect(kill(vmm.pid, 0) != 0, "the VMM process is gone")
            #expect(access(vmm.jail, F_OK) != 0, "its jail directory is removed")
        }
        #expect(try fileDigest(Self.image) == imageBefore, "the base image is never written")
    }

    /// Size and modification time to the nanosecond: any write to the image changes it.
    func fileDigest(_ path: String) throws -> String {
        var st = stat()
        #expect(stat(path, &st) == 0)
        return "\(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }
}
