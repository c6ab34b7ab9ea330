import FoundationEssentials
import Glibc
@testable import KilnService
import Sandbox
import Testing

/// Warm pools with real VMs (the default template, restored in well under a second here): a
/// pooled sandbox takes the request's identity and the host's clock at hand-out, counts for no
/// tenant, and ends with the service. Guest work: one process per sandbox.
@Suite(.serialized) struct WarmPoolTests {
    static let key = "pool-key-1234"
    typealias Created = ServiceSandboxTests.Created

    /// The default template's directory, made once for all suites (two suites making it at once
    /// would restore one's snapshot while the other writes it).
    static func template() async throws -> String {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        return try await madeTemplate.value
    }

    static let madeTemplate = Task<String, any Error> {
        let config = Sandbox.Configuration(kernelPath: ServiceSandboxTests.kernel, imagePath: ServiceSandboxTests.image)
        let name = Templates.autoName(for: config)
        if !Templates.usable(name) { try await Templates.create(name, config: config).stop() }
        return Templates.path(name)
    }

    static func makeServer(pool: PoolSettings, idlePause: Double? = SandboxManager.defaultIdlePause) async throws -> TestServer {
        let path = try await template()
        return try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [key], maxSandboxes: 1)], resolve: { name in
            guard name == "default" else { throw APIError(404, "template '\(name)' not found") }
            return path
        }, pool: pool, idlePause: idlePause)
    }

    /// Waits (up to a minute) until `parked` says yes; false if it never does.
    static func waitUntil(_ parked: () async -> Bool) async throws -> Bool {
        for _ in 0..<600 {
            if await parked() { return true }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        return false
    }

    /// The value of one sample line of `GET /metrics`.
    static func metric(_ server: TestServer, _ line: String) async throws -> Int? {
        let text = try await server.request("GET", "/metrics", key: key).text
        return text.split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
    }

    /// Waits (up to a minute) until the pool holds `n` ready sandboxes.
    static func waitForPool(_ server: TestServer, _ n: Int) async throws {
        for _ in 0..<600 {
            if try await metric(server, #"kiln_pool_sandboxes{template="default"}"#) == n { return }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        Issue.record("the pool did not reach \(n) ready sandboxes")
    }

    /// Runs `sh -c script` through envd's process.Process/Start; returns stdout and the exit code.
    static func run(_ server: TestServer, _ sandbox: Created, _ script: String) async throws -> (String, Int?) {
        let envd = [("e2b-sandbox-id", sandbox.sandboxID), ("x-access-token", sandbox.envdAccessToken)]
        let arg = String(decoding: try JSONEncoder().encode(script), as: UTF8.self)
        let body = Array(#"{"process": {"cmd": "/bin/sh", "args": ["-c", \#(arg)]}}"#.utf8)
        var message: [UInt8] = [0]
        withUnsafeBytes(of: UInt32(body.count).bigEndian) { message += $0 }
        message += Array(body)
        let reply = try await RawHTTP.request(port: server.port, "POST", "/process.Process/Start",
                                              headers: envd + [("content-type", "application/connect+json"), ("connect-protocol-version", "1")],
                                              body: message)
        let events = ServiceSandboxTests.envelopes(reply.body).filter { $0.0 == 0 }
            .compactMap { try? JSONDecoder().decode(ServiceSandboxTests.EventResponse.self, from: Data($0.1)).event }
        let stdout = events.compactMap { $0.data?.stdout.flatMap { Data(base64Encoded: $0) } }.reduce(Data(), +)
        return (String(decoding: stdout, as: UTF8.self), events.last?.end?.exitCode)
    }

    static func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? FileIO.read("/proc/\(pid)/stat") else { return false }
        return !String(decoding: stat, as: UTF8.self).contains(") Z ")
    }

    @Test func aPooledSandboxTakesTheRequestsIdentityAndTheHostsClockAndCountsForNoTenant() async throws {
        var pool = PoolSettings()
        pool.sizes["default"] = 1
        let server = try await Self.makeServer(pool: pool)
        do { try await handOut(server) } catch {
            await server.stop()
            throw error
        }
        let pooledPIDs = await server.manager.pools.values.flatMap { $0.ready.compactMap { $0.sandbox.vmmProcess?.pid } }
        await server.stop()
        // The service's shutdown stopped the pool: no pooled VMM runs on.
        for pid in pooledPIDs { #expect(!Self.isRunning(pid), "pooled VMM \(pid) outlived the service") }
    }

    func handOut(_ server: TestServer) async throws {
        try await Self.waitForPool(server, 1)
        // A pooled sandbox belongs to nobody: not listed, not counted against the limit of 1.
        let listed = try await server.request("GET", "/v2/sandboxes", key: Self.key).text
        #expect(!listed.contains("sandboxID"), "\(listed)")
        #expect(try await Self.metric(server, #"kiln_sandboxes{tenant="solo",state="running"}"#) == 0)
        // Long enough in the pool for a clock that was not set at hand-out to show it.
        try await Task.sleep(nanoseconds: 6_000_000_000)

        let before = Int(Timestamps.now())
        let create = try await server.request("POST", "/v2/sandboxes", key: Self.key,
                                              body: #"{"templateID": "default", "timeout": 120, "metadata": {"who": "first"}, "envVars": {"GREETING": "hello pool"}}"#)
        #expect(create.status == 201, "\(create.text)")
        let first = try create.json(Created.self)
        #expect(try await Self.metric(server, #"kiln_pool_creates_total{template="default",result="hit"}"#) == 1)
        let (out, code) = try await Self.run(server, first, #"echo "$GREETING|$E2B_SANDBOX_ID"; date +%s"#)
        #expect(code == 0)
        let lines = out.split(separator: "\n")
        #expect(lines.first == "hello pool|\(first.sandboxID)", "\(out)")
        let guestTime = lines.dropFirst().first.flatMap { Int($0) } ?? 0
        // Between the host's clock before the create and after the command (a loaded host can take
        // seconds from the guest's `date` to the command's end): a clock left as the pool had it
        // is behind `before` by the wait above.
        let after = Int(Timestamps.now())
        #expect(guestTime >= before - 1 && guestTime <= after + 1, "guest clock \(guestTime), host \(before)...\(after)")
        let info = try await server.request("GET", "/sandboxes/\(first.sandboxID)", key: Self.key).text
        #expect(info.contains(#""who":"first""#) && info.contains(first.sandboxID), "\(info)")

        // The refill does not count either: with its one sandbox running, the tenant is at its limit.
        try await Self.waitForPool(server, 1)
        #expect(try await server.request("POST", "/v2/sandboxes", key: Self.key, body: #"{"templateID": "default"}"#).status == 429)
        #expect(try await server.request("DELETE", "/sandboxes/\(first.sandboxID)", key: Self.key).status == 204)

        // A second create in a row works (from the refill), with its own identity.
        let again = try await server.request("POST", "/v2/sandboxes", key: Self.key,
                                             body: #"{"templateID": "default", "metadata": {"who": "second"}}"#)
        #expect(again.status == 201, "\(again.text)")
        let second = try again.json(Created.self)
        #expect(second.sandboxID != first.sandboxID)
        let (out2, code2) = try await Self.run(server, second, #"echo "[$GREETING]$E2B_SANDBOX_ID""#)
        #expect(code2 == 0 && out2 == "[]\(second.sandboxID)\n", "\(out2)")
    }

    /// Idle parking in the service: a pool member waits parked, and the create that takes it gets
    /// a running guest with the request's identity and the host's clock, not the pool's.
    @Test func aParkedPoolMemberIsHandedOutAwakeWithTheRequestsIdentity() async throws {
        var pool = PoolSettings()
        pool.sizes["default"] = 1
        let server = try await Self.makeServer(pool: pool, idlePause: 0.5)
        do {
            try await Self.waitForPool(server, 1)
            #expect(try await Self.waitUntil { await server.manager.pools["default"]?.ready.first?.sandbox.isParked == true },
                    "the pool member was not parked")
            let handOut = time(nil)
            let create = try await server.request("POST", "/v2/sandboxes", key: Self.key,
                                                  body: #"{"templateID": "default", "envVars": {"GREETING": "awake"}}"#)
            #expect(create.status == 201, "\(create.text)")
            let created = try create.json(Created.self)
            let (out, code) = try await Self.run(server, created, #"echo "$GREETING|$E2B_SANDBOX_ID"; date +%s"#)
            #expect(code == 0)
            let lines = out.split(separator: "\n")
            #expect(lines.first == "awake|\(created.sandboxID)", "\(out)")
            let guestTime = lines.dropFirst().first.flatMap { Int($0) } ?? 0
            #expect(guestTime >= handOut - 1 && guestTime <= time(nil) + 1, "guest clock \(guestTime), hand-out at \(handOut)")

            // Between commands the tenant's sandbox is parked too, and its next command still runs.
            #expect(try await Self.waitUntil { await server.manager.entries[created.sandboxID]?.live?.sandbox.isParked == true },
                    "the idle sandbox was not parked")
            let (again, code2) = try await Self.run(server, created, #"echo "again $GREETING""#)
            #expect(code2 == 0 && again == "again awake\n", "\(again)")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    @Test func underMemoryPressureThePoolStaysEmptyAndCreatesStillWork() async throws {
        var pool = PoolSettings()
        pool.sizes["default"] = 1
        pool.minAvailableMiB = 1 << 30 // more than any host has: always short
        let server = try await Self.makeServer(pool: pool)
        do {
            let create = try await server.request("POST", "/v2/sandboxes", key: Self.key, body: #"{"templateID": "default"}"#)
            #expect(create.status == 201, "\(create.text)")
            #expect(try await Self.metric(server, #"kiln_pool_creates_total{template="default",result="miss"}"#) == 1)
            #expect(await server.manager.pools["default"]?.ready.isEmpty ?? true)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }
}
