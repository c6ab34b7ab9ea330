import AgentProtocol
import Glibc
import Sandbox
import Testing

/// Idle parking (Sources/Sandbox/Sandbox+Idle.swift): a parked sandbox's VM is paused by the host
/// and the next thing sent to its agent resumes it first, so the caller sees only its answer; a
/// running command is never parked. Guest work: three processes per isolation.
@Suite struct IdleParkingTests {
    static func template() async throws -> String {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        return try await TemplateTests.defaultTemplate()
    }

    /// Waits (up to a minute) until `sandbox` is parked; false if it never is.
    static func waitUntilParked(_ sandbox: Sandbox) async throws -> Bool {
        for _ in 0..<600 {
            if sandbox.isParked { return true }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        return false
    }

    @Test(arguments: [Isolation.automatic, .inProcess])
    func aParkedSandboxAnswersItsNextCommandAndKeepsTheHostsTime(_ isolation: Isolation) async throws {
        let snapshot = try await Self.template()
        let sandbox = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: "/tmp/kiln-idle-tests-\(getpid())",
                                                isolation: isolation)
        defer { sandbox.stop() }

        try sandbox.park()
        #expect(sandbox.isParked)
        // Parked for a moment: the guest's clock runs on meanwhile (kvmclock follows the host's TSC).
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let before = time(nil)
        let out = try await TemplateTests().run(sandbox, ["date", "+%s"])
        let guestTime = Int(out.filter(\.isNumber)) ?? 0
        #expect(!sandbox.isParked)
        #expect(guestTime >= before - 1 && guestTime <= time(nil) + 1, "guest clock \(guestTime), host \(before)...\(time(nil))")

        // Left alone, it is parked again; a ping (no guest process) and a file read get answers.
        sandbox.parkWhenIdle(after: 0.2)
        #expect(try await Self.waitUntilParked(sandbox), "an idle sandbox was not parked")
        _ = try await sandbox.agent.ping()
        #expect(try await Self.waitUntilParked(sandbox), "an idle sandbox was not parked again")
        #expect(try await sandbox.agent.readFile("/etc/passwd").contents.starts(with: Array("root:".utf8)))
        #expect(sandbox.parkings.parks >= 3 && sandbox.parkings.resumes >= 3, "\(sandbox.parkings)")

        // A running command is never parked under it: this one waits on its stdin until the
        // test closes it, however slowly the guest runs.
        let p = try await sandbox.agent.exec(Exec(argv: ["sh", "-c", "read x; echo done"], environment: ["PATH=/bin:/usr/bin"]))
        try await Task.sleep(nanoseconds: 500_000_000)
        let parks = sandbox.parkings.parks
        // Five idle delays in, the command still waits.
        try await Task.sleep(nanoseconds: 1_000_000_000)
        #expect(!sandbox.isParked && sandbox.parkings.parks == parks, "parked while a command ran: \(sandbox.parkings)")
        p.closeStdin()
        let r = try await p.collect()
        #expect(String(decoding: r.stdout, as: UTF8.self) == "done\n")
    }
}
