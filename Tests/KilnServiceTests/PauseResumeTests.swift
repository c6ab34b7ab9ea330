import Devices
import Glibc
@testable import KilnService
import Sandbox
import VMM
import Testing

/// Pause and resume with a real VM: the pause snapshot records the agent session, so the resumed
/// sandbox goes on with the guest's kept connection (no reconnect) and runs a command.
@Suite struct PauseResumeTests {
    @Test func aResumedSandboxKeepsItsAgentConnectionAndRunsACommand() async throws {
        let path = try await WarmPoolTests.template()
        let server = try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [WarmPoolTests.key], maxSandboxes: 1)]) { name in
            guard name == "default" else { throw APIError(404, "template '\(name)' not found") }
            return path
        }
        do { try await pauseAndResume(server) } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// A sandbox whose VMM dies (SIGKILL from outside) goes with it: the API answers 404 for
    /// it, as for a killed one, instead of listing a running sandbox that runs nothing, and its
    /// place in the tenant's limit is free again (found by Benchmarks/chaos.sh
    /// `serve-vmm-killed-pausing`: it stayed "running" and answered a resume with 409).
    @Test func aSandboxWhoseVMDiesIsGoneAndFreesItsPlace() async throws {
        let path = try await WarmPoolTests.template()
        let server = try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [WarmPoolTests.key], maxSandboxes: 1)],
                                                resolve: { _ in path })
        await server.manager.startTimeoutSweep()  // as `kiln serve` does
        do {
            let key = WarmPoolTests.key
            let create = try await server.request("POST", "/v2/sandboxes", key: key, body: #"{"templateID": "default", "timeout": 120}"#)
            #expect(create.status == 201, "\(create.text)")
            let sandbox = try create.json(WarmPoolTests.Created.self)
            let pid = try #require(await server.manager.entries[sandbox.sandboxID]?.live?.sandbox.vmmProcess?.pid)
            #expect(Glibc.kill(pid, SIGKILL) == 0)
            var status = 0
            for _ in 0..<100 {
                status = try await server.request("GET", "/sandboxes/\(sandbox.sandboxID)", key: key).status
                if status == 404 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(status == 404, "the sandbox of a dead VM is still listed")
            let resume = try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/resume", key: key, body: "{}")
            #expect(resume.status == 404, "\(resume.text)")
            let again = try await server.request("POST", "/v2/sandboxes", key: key, body: #"{"templateID": "default", "timeout": 120}"#)
            #expect(again.status == 201, "the tenant's one place is still taken: \(again.text)")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// `kiln serve --disk-rate`: every sandbox's disks get the operator's limit (a tenant cannot
    /// take the host's disk from the others); the pause snapshot records it with the disks.
    @Test func theServicesDiskRateLimitsEverySandboxsDisks() async throws {
        let path = try await WarmPoolTests.template()
        let limit = try SandboxSettings.parseRate("8M,ops=500", .diskRate)
        let server = try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [WarmPoolTests.key], maxSandboxes: 1)],
                                                resolve: { _ in path }) { $0.limits = Sandbox.Limits(disk: limit) }
        do {
            let key = WarmPoolTests.key
            let create = try await server.request("POST", "/v2/sandboxes", key: key, body: #"{"templateID": "default", "timeout": 120}"#)
            #expect(create.status == 201, "\(create.text)")
            let sandbox = try create.json(WarmPoolTests.Created.self)
            #expect(try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/pause", key: key).status == 204)
            let info = try SnapshotInfo.read(directory: await server.manager.snapshotDirectory(sandbox.sandboxID))
            #expect(!info.config.disks.isEmpty)
            #expect(info.config.disks.allSatisfy { $0.limit == limit }, "\(info.config.disks.map(\.limit))")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// A create's own `rateLimits`, within the operator's: its VM runs with them (the pause
    /// snapshot records the disks', and the resumed VM's next snapshot still does), its detail
    /// shows them, and a NIC limit without a network is refused.
    @Test func aCreatesOwnLimitsAreWhatItsVMRunsWithAcrossPauseAndResume() async throws {
        let path = try await WarmPoolTests.template()
        let ceiling = try SandboxSettings.parseRate("8M,ops=500", .diskRate)
        let server = try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [WarmPoolTests.key], maxSandboxes: 1)],
                                                resolve: { _ in path }) { $0.limits = Sandbox.Limits(disk: ceiling) }
        do {
            let key = WarmPoolTests.key
            let noNetwork = try await server.request("POST", "/v2/sandboxes", key: key,
                                                     body: #"{"templateID": "default", "rateLimits": {"net": {"bandwidth": {"size": 65536}}}}"#)
            #expect(noNetwork.status == 400 && noNetwork.text.contains("rateLimits.net limits the network device"), "\(noNetwork.text)")
            let asked = #"{"disk": {"bandwidth": {"size": 2097152, "oneTimeBurst": 65536}}}"#
            let create = try await server.request("POST", "/v2/sandboxes", key: key,
                                                  body: #"{"templateID": "default", "timeout": 120, "rateLimits": \#(asked)}"#)
            #expect(create.status == 201, "\(create.text)")
            let sandbox = try create.json(WarmPoolTests.Created.self)
            // The asked bandwidth bucket, and the operator's ops bucket it left out.
            let expected = RateLimit(bandwidth: TokenBucket.Limit(size: 2 << 20, oneTimeBurst: 65536), operations: ceiling.operations)
            struct Detail: Decodable { var rateLimits: RateLimitsBody? }
            let detail = try await server.request("GET", "/sandboxes/\(sandbox.sandboxID)", key: key)
            #expect(try detail.json(Detail.self).rateLimits == RateLimitsBody(Sandbox.Limits(disk: expected)), "\(detail.text)")
            for round in ["pause", "pause after the resume"] {
                #expect(try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/pause", key: key).status == 204, "\(round)")
                let info = try SnapshotInfo.read(directory: await server.manager.snapshotDirectory(sandbox.sandboxID))
                #expect(!info.config.disks.isEmpty)
                #expect(info.config.disks.allSatisfy { $0.limit == expected }, "\(round): \(info.config.disks.map(\.limit))")
                guard round == "pause" else { break }
                let resumed = try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/connect", key: key, body: #"{"timeout": 120}"#)
                #expect(resumed.status == 201, "\(resumed.text)")
                let (out, code) = try await WarmPoolTests.run(server, sandbox, "echo limited")
                #expect(code == 0 && out == "limited\n", "\(out)")
            }
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func pauseAndResume(_ server: TestServer) async throws {
        let key = WarmPoolTests.key
        let create = try await server.request("POST", "/v2/sandboxes", key: key, body: #"{"templateID": "default", "timeout": 120}"#)
        #expect(create.status == 201, "\(create.text)")
        let sandbox = try create.json(WarmPoolTests.Created.self)
        let (before, _) = try await WarmPoolTests.run(server, sandbox, "echo one > /tmp/mark; cat /tmp/mark")
        #expect(before == "one\n")

        #expect(try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/pause", key: key).status == 204)
        let resumed = try await server.request("POST", "/sandboxes/\(sandbox.sandboxID)/connect", key: key, body: #"{"timeout": 120}"#)
        #expect(resumed.status == 201, "\(resumed.text)")
        let live = await server.manager.entries[sandbox.sandboxID]?.live
        #expect(live?.agent.resumedSession == true, "the resumed sandbox made a new agent connection")

        let (after, code) = try await WarmPoolTests.run(server, sandbox, "cat /tmp/mark")
        #expect(code == 0 && after == "one\n", "\(after)")
    }
}
