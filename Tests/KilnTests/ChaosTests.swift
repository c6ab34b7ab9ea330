import Glibc
import KilnTestSupport
import LinuxSys
@testable import Sandbox
import Testing
import VMM

/// Issue 14's chaos cases that fit CI time (docs/security.md, "Chaos"): processes SIGKILLed at
/// each phase of `kiln run`, templates damaged on disk, a snapshot onto a full disk. Every
/// sandbox here is restored from a template; none boots.
@Suite(.blocking) struct ChaosTests {
    static let seconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        #expect(geteuid() == 0, "the jail needs root (CI runs as root)")
    }

    /// Runtime directories (/run/kiln/sandbox-<pid>-...) of the given `kiln run` processes.
    static func runtimeDirectories(of pids: Set<pid_t>) -> [String] {
        TestFiles.list(Sandbox.defaultRuntimeDirectory).filter { name in
            guard name.hasPrefix("sandbox-"), let pid = name.dropFirst("sandbox-".count).split(separator: "-").first.flatMap({ pid_t($0) }) else { return false }
            return pids.contains(pid)
        }
    }

    /// Whether `pid` still runs (a zombie does not count: nothing of it runs or holds memory).
    static func alive(_ pid: pid_t) -> Bool {
        guard let stat = TestFiles.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].hasPrefix(" Z")
    }

    /// Polls until `pid` no longer runs; false if it still does after `seconds`.
    static func gone(_ pid: pid_t, seconds: Double = 30) -> Bool {
        for _ in 0..<Int(seconds * 20) {
            if !alive(pid) { return true }
            usleep(50_000)
        }
        return false
    }

    /// `kiln run -- sh -c SCRIPT` once SCRIPT printed "started", and its jailed VMM.
    static func runUntilStarted(_ script: String) throws -> (KilnProcess, vmm: pid_t) {
        let kiln = try KilnProcess(["run", "--", "sh", "-c", script])
        kiln.closeInput()
        try kiln.waitForLine("started", seconds: seconds)
        let vmm = kiln.children
        try #require(vmm.count == 1, "kiln run's children: \(vmm)")
        return (kiln, vmm[0])
    }

    /// The VMM SIGKILLed while the command streams: `kiln run` says so in one line and exits 1,
    /// and its supervisor removed the jail, the cgroup and the runtime directory.
    @Test func aVMMKilledWhileACommandStreamsEndsTheRunWithOneLineAndLeavesNothing() throws {
        let (kiln, vmm) = try Self.runUntilStarted("echo started; while true; do echo tick; sleep 1; done")
        kill(vmm, SIGKILL)
        let status = try kiln.wait(seconds: 60)
        #expect(status == 1)
        // One line, then the console's last lines if the guest printed any.
        let first = kiln.errorOutput.split(separator: "\n").first.map(String.init) ?? ""
        #expect(first == "kiln: the sandbox's VM ended while the command ran: the VMM was killed by signal 9"
                || first == "kiln: the sandbox's VM ended while the command ran: the VMM was killed by signal 9; last console lines:",
                "\(kiln.errorOutput)")
        #expect(Self.gone(vmm))
        #expect(JailTests.leftovers(of: [kiln.pid]).isEmpty, "\(JailTests.leftovers(of: [kiln.pid]))")
        #expect(Self.runtimeDirectories(of: [kiln.pid]).isEmpty, "\(Self.runtimeDirectories(of: [kiln.pid]))")
    }

    /// `kiln run` SIGKILLed while its command runs, and another while it restores: each VMM dies
    /// with its supervisor, and the next run's sweep removes the jail directories, cgroups and
    /// runtime directories they left; that run works.
    @Test func kilnRunKilledDuringACommandOrARestoreTakesItsVMMAndTheNextRunSweepsTheRest() throws {
        let (running, vmm) = try Self.runUntilStarted("echo started; sleep 600")
        kill(running.pid, SIGKILL)
        _ = try running.wait(seconds: 30)
        #expect(Self.gone(vmm), "the VMM \(vmm) outlived its kiln run")
        #expect(!Self.runtimeDirectories(of: [running.pid]).isEmpty, "a SIGKILLed kiln run cannot clean up (the sweep's job)")

        // Killed as soon as its runtime directory exists: the VMM is starting or restoring.
        let restoring = try KilnProcess(["run", "--", "true"])
        restoring.closeInput()
        var started: [pid_t] = []
        for _ in 0..<12_000 where Self.runtimeDirectories(of: [restoring.pid]).isEmpty { usleep(5_000) }
        try #require(!Self.runtimeDirectories(of: [restoring.pid]).isEmpty, "kiln run never made its runtime directory")
        usleep(100_000)
        started = restoring.children
        kill(restoring.pid, SIGKILL)
        _ = try restoring.wait(seconds: 30)
        for pid in started { #expect(Self.gone(pid), "the VMM \(pid) outlived its kiln run") }

        let next = try KilnProcess(["run", "--", "echo", "ok"])
        next.closeInput()
        #expect(try next.wait(seconds: Self.seconds) == 0, "\(next.errorOutput)")
        #expect(next.output == "ok\n")
        let killed: Set<pid_t> = [running.pid, restoring.pid]
        #expect(JailTests.leftovers(of: killed).isEmpty, "\(JailTests.leftovers(of: killed))")
        #expect(Self.runtimeDirectories(of: killed).isEmpty, "\(Self.runtimeDirectories(of: killed))")
    }

    /// A template whose files were damaged on disk (state cut short, a byte changed, the memory
    /// file truncated) is not usable: `kiln run --template` refuses it in one line, `template
    /// list` marks it, and restoring it says why in one line. No VM starts.
    @Test func aDamagedTemplateIsRefusedInOneLine() async throws {
        let good = try await TemplateTests.defaultTemplate()
        var st = stat()
        #expect(stat(good + "/state", &st) == 0 && st.st_size > 2000)
        let stateSize = Int(st.st_size)
        #expect(stat(good + "/memory", &st) == 0)
        let memorySize = Int(st.st_size)
        let damages: [(name: String, damage: String, reason: String)] = [
            ("cut-state", "truncate -s 100 state && truncate -s \(memorySize) memory", "state file is truncated (100 of \(stateSize) bytes)"),
            ("changed-state", "printf 'X' | dd of=state bs=1 seek=2000 conv=notrunc 2>/dev/null && truncate -s \(memorySize) memory",
             "state file is corrupted (checksum mismatch)"),
            ("cut-memory", "truncate -s 4096 memory", "memory file is 4096 bytes, the state says \(memorySize) (truncated or from another snapshot)"),
        ]
        for d in damages {
            let name = "chaos-\(d.name)-\(getpid())", dir = Templates.path(name)
            defer { _ = system("rm -rf '\(dir)'") }
            #expect(system("mkdir -p '\(dir)' && cp '\(good)/state' '\(dir)/state' && cd '\(dir)' && \(d.damage)") == 0)
            #expect(!Templates.usable(name), "\(d.name)")

            let kiln = try KilnProcess(["run", "--template", name, "--", "true"])
            kiln.closeInput()
            #expect(try kiln.wait(seconds: 60) == 1)
            let said = kiln.errorOutput
            #expect(said.hasPrefix("kiln: template '\(name)' is unusable: ") && said.contains(d.reason)
                    && said.hasSuffix(" (kiln template create \(name))\n") && said.filter { $0 == "\n" }.count == 1, "\(said)")

            let list = try KilnProcess(["template", "list"])
            #expect(try list.wait(seconds: 60) == 0)
            #expect(list.outputLines.contains { $0.hasPrefix("\(name)  (unusable: ") && $0.contains(d.reason) }, "\(list.output)")

            do {
                let s = try await Sandbox.restore(snapshot: dir, runtimeDirectory: "/tmp/kiln-chaos-damaged-\(getpid())")
                s.stop()
                Issue.record("the damaged template \(d.name) was restored")
            } catch {
                #expect("\(error)".hasPrefix("snapshot \(dir): "), "\(error)")
                #expect("\(error)".contains(d.reason), "\(error)")
                #expect(!"\(error)".contains("\n"), "\(error)")
            }
        }
    }

    /// A snapshot onto a full disk (an 8 MiB tmpfs as the template cache): one line naming the
    /// cause, no state file (so nothing is usable later), the staging directory removed, and the
    /// sandbox runs on. A staging directory a killed `save` left is swept at the same time.
    @Test func aTemplateSavedOntoAFullDiskFailsInOneLineLeavesNothingAndTheSandboxRunsOn() async throws {
        let template = try await TemplateTests.defaultTemplate()
        let cache = "/tmp/kiln-chaos-full-\(getpid())"
        mkdir(cache, 0o700)
        try #require(system("mount -t tmpfs -o size=8m kiln-chaos '\(cache)'") == 0)
        defer { _ = system("umount '\(cache)'"); rmdir(cache) }
        // What a `kiln template create` SIGKILLed while saving leaves (its pid no longer runs).
        let dead = Self.deadPid()
        #expect(system("mkdir '\(cache)/.auto-x.tmp-\(dead)' && echo partial > '\(cache)/.auto-x.tmp-\(dead)/memory'") == 0)

        let sandbox = try await Sandbox.restore(snapshot: template, runtimeDirectory: "/tmp/kiln-chaos-full-run-\(getpid())")
        defer { sandbox.stop() }
        do {
            try Templates.save(sandbox, as: "full", in: cache)
            Issue.record("a template was saved onto a full 8 MiB disk")
        } catch {
            #expect("\(error)".contains("No space left on device"), "\(error)")
            #expect(!"\(error)".contains("\n"), "\(error)")
        }
        #expect(TestFiles.list(cache).isEmpty, "left in the cache: \(TestFiles.list(cache))")
        #expect(throws: MachineError.self) { try SnapshotInfo.read(directory: cache + "/full") }
        let out = try await TemplateTests().run(sandbox, ["echo", "still here"])
        #expect(out == "still here\n")
    }

    /// A pid that no process has: a child that already exited and was reaped.
    static func deadPid() -> pid_t {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        guard posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ) == 0 else { return 0 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return pid
    }
}
