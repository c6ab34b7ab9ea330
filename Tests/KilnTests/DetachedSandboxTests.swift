import AgentProtocol
import Glibc
import KilnTestSupport
import Sandbox
import Testing
import VMMProtocol

/// Detached sandboxes as a restarted host service sees them: the VMM outlives the process that
/// started it (a helper process, SIGKILLed), another process adopts it, runs a command in it,
/// snapshots it and stops it, and nothing is left; a sandbox whose VMM died is swept.
@Suite(.serialized) struct DetachedSandboxTests {
    let runtime = "/tmp/kiln-detach-tests-\(getpid())"

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        #expect(geteuid() == 0, "a detached sandbox is jailed, which needs root (CI runs as root)")
    }

    /// The default template (Scripts/test.sh makes it; a bare `swift test` pays one boot here).
    static func template() async throws -> String {
        try await TemplateTests.defaultTemplate()
    }

    /// Starts a detached sandbox from a helper process, SIGKILLs the helper once the sandbox is up
    /// and returns the sandbox's runtime directory and record.
    func startDetachedAndKillItsCreator() async throws -> (directory: String, record: VMMRecord) {
        let snapshot = try await Self.template()
        let helperPath = String(KilnProcess.binary.dropLast("kiln".count)) + "kiln-test-detach"
        let helper = try KilnProcess([snapshot, runtime], executable: helperPath)
        try helper.waitFor("the helper's detached sandbox", seconds: 120) { $0.output.hasPrefix("ready ") && $0.output.hasSuffix("\n") }
        let directory = String(helper.output.dropFirst("ready ".count).dropLast())
        kill(helper.pid, SIGKILL)
        _ = try helper.wait(seconds: 30)
        let bytes = try #require(Self.read(directory + "/sandbox.record"), "no record in \(directory)")
        return (directory, try VMMRecord.decode(bytes))
    }

    @Test func aDetachedSandboxOutlivesItsCreatorIsAdoptedAnswersSnapshotsAndLeavesNothing() async throws {
        defer { rmdir(runtime) }
        let (directory, record) = try await startDetachedAndKillItsCreator()
        // A failure below must not leave the detached VMM running (it outlives this process):
        // killed if still there, the same process (its start time as the record has it).
        defer {
            let stat = Self.read("/proc/\(record.pid)/stat").map { String(decoding: $0, as: UTF8.self) } ?? ""
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            if fields.count > 19, UInt64(fields[19]) == record.startTime { kill(record.pid, SIGKILL) }
        }
        #expect(kill(record.pid, 0) == 0, "the VMM died with the process that started it")
        #expect(Sandbox.detachedSandboxes(in: runtime) == [directory])
        #expect(Sandbox.sweepDead(in: runtime).isEmpty, "a running detached sandbox was swept")

        // 120 s: under a parallel test run the guest has taken over 30 s to answer a new connection (CI, twice).
        let sandbox = try await Sandbox.adopt(directory: directory, timeout: 120)
        let p = try await sandbox.agent.exec(Exec(argv: ["sh", "-c", "echo hi"], environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let r = try await p.collect()
        #expect(r.status == ExitStatus(.exited(code: 0)))
        #expect(String(decoding: r.stdout, as: UTF8.self) == "hi\n")

        // The service pauses sandboxes to disk: a snapshot of an adopted sandbox is a template.
        let saved = "/tmp/kiln-detach-snapshot-\(getpid())"
        defer { for f in Self.entries(saved) { unlink(saved + "/" + f) }; rmdir(saved) }
        try sandbox.snapshot(to: saved)
        #expect(Set(Self.entries(saved)).isSuperset(of: ["memory", "state"]), "\(Self.entries(saved))")
        let clone = try await Sandbox.restore(snapshot: saved, runtimeDirectory: runtime, isolation: .jailed)
        let c = try await clone.agent.exec(Exec(argv: ["sh", "-c", "echo clone"], environment: ["PATH=/bin:/usr/bin"]))
        c.closeStdin()
        #expect(String(decoding: try await c.collect().stdout, as: UTF8.self) == "clone\n")
        clone.stop()

        #expect(sandbox.vmmProcess?.pid == record.pid)
        sandbox.stop()
        Self.expectNothingLeft(directory: directory, record: record)
    }

    @Test func aSandboxWhoseVMMWasKilledIsSweptAndCannotBeAdopted() async throws {
        defer { rmdir(runtime) }
        let first = try await startDetachedAndKillItsCreator()
        let second = try await startDetachedAndKillItsCreator()
        for vmm in [first.record, second.record] {
            kill(vmm.pid, SIGKILL)
            for _ in 0..<500 where kill(vmm.pid, 0) == 0 { usleep(10_000) }
        }
        // Adopting a dead one says so and removes what it left.
        await #expect(throws: SandboxError.self) { _ = try await Sandbox.adopt(directory: first.directory) }
        Self.expectNothingLeft(directory: first.directory, record: first.record)
        // A sweep finds the other.
        #expect(Sandbox.sweepDead(in: runtime) == [second.directory])
        Self.expectNothingLeft(directory: second.directory, record: second.record)
    }

    static func expectNothingLeft(directory: String, record: VMMRecord) {
        // Its new parent (init, or a subreaper) reaps the killed VMM in its own time.
        for _ in 0..<500 where kill(record.pid, 0) == 0 && ProcessIdentityCheck.startTime(record.pid) == record.startTime { usleep(10_000) }
        #expect(kill(record.pid, 0) != 0 || ProcessIdentityCheck.startTime(record.pid) != record.startTime, "the VMM still runs")
        #expect(access(directory, F_OK) != 0, "the runtime directory \(directory) is left: \(entries(directory))")
        #expect(access(record.jailDirectory, F_OK) != 0, "the jail directory \(record.jailDirectory) is left")
        for cgroup in record.cgroups { #expect(access(cgroup, F_OK) != 0, "the cgroup \(cgroup) is left") }
    }

    static func read(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = Glibc.read(fd, &buffer, buffer.count)
        return n >= 0 ? Array(buffer[0..<n]) : nil
    }

    static func entries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }
}

/// A reused pid is not the VMM: compare start times (/proc/PID/stat field 22).
enum ProcessIdentityCheck {
    static func startTime(_ pid: pid_t) -> UInt64? {
        guard let bytes = DetachedSandboxTests.read("/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}
