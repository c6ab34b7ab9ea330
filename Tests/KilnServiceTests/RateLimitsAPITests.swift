import Devices
import FoundationEssentials
@testable import KilnService
import Sandbox
import Testing

/// A create's own `rateLimits` (docs/service.md, "Per-sandbox rate limits"), without VMs: what
/// the body becomes within the operator's limits, and the 400s for what it may not ask. A real
/// sandbox restored with them: `PauseResumeTests.aCreatesOwnLimitsAreWhatItsVMRunsWithAcrossPauseAndResume`.
@Suite struct RateLimitsAPITests {
    static let key = "limits-key-1234"

    func body(_ json: String) throws -> RateLimitsBody? {
        try JSONDecoder().decode(NewSandboxRequest.self, from: Data(#"{"templateID": "base", "rateLimits": \#(json)}"#.utf8)).rateLimits
    }

    func bucket(_ size: UInt64, burst: UInt64 = 0, ms: UInt64 = 1000) -> TokenBucket.Limit {
        TokenBucket.Limit(size: size, oneTimeBurst: burst, refillMilliseconds: ms)
    }

    @Test func aCreatesBucketsBecomeTheSandboxsLimits() throws {
        let asked = try body(#"{"disk": {"bandwidth": {"size": 1048576, "oneTimeBurst": 4096}, "ops": {"size": 200, "refillTime": 500}}, "net": {"bandwidth": {"size": 65536}}}"#)
        let limits = try RateLimitsBody.effective(asked: asked, ceiling: nil, networked: true)
        #expect(limits == Sandbox.Limits(disk: RateLimit(bandwidth: bucket(1 << 20, burst: 4096), operations: bucket(200, ms: 500)),
                                         net: RateLimit(bandwidth: bucket(65536))))
        // What the record keeps and the detail shows reads back as the same limits.
        let shown = RateLimitsBody(limits!)
        let again = try JSONDecoder().decode(RateLimitsBody.self, from: try JSONEncoder().encode(shown))
        #expect(try RateLimitsBody.effective(asked: again, ceiling: nil, networked: true) == limits)
        // No rateLimits: the operator's, the NIC's only with a network; none at all: the template's own (nil).
        let ceiling = Sandbox.Limits(disk: RateLimit(operations: bucket(500)), net: RateLimit(bandwidth: bucket(1 << 20)))
        #expect(try RateLimitsBody.effective(asked: nil, ceiling: ceiling, networked: false) == Sandbox.Limits(disk: ceiling.disk))
        #expect(try RateLimitsBody.effective(asked: nil, ceiling: nil, networked: true) == nil)
    }

    @Test func theOperatorsLimitsAreTheCeiling() throws {
        let ceiling = Sandbox.Limits(disk: RateLimit(bandwidth: bucket(8 << 20, burst: 1 << 20), operations: bucket(500)),
                                     net: RateLimit(bandwidth: bucket(1 << 20)))
        // A bucket the create leaves out is the operator's; one it gives, stricter, is its own.
        let asked = try body(#"{"disk": {"bandwidth": {"size": 1048576}}}"#)
        let limits = try RateLimitsBody.effective(asked: asked, ceiling: ceiling, networked: true)
        #expect(limits == Sandbox.Limits(disk: RateLimit(bandwidth: bucket(1 << 20), operations: bucket(500)), net: ceiling.net))
        // Faster, larger or burstier than the operator's: refused, naming the field.
        let refused: [(String, String)] = [
            (#"{"disk": {"ops": {"size": 501}}}"#, "rateLimits.disk.ops allows more than this service's limit"),
            // The same size refilled twice as often is twice the rate.
            (#"{"net": {"bandwidth": {"size": 1048576, "refillTime": 500}}}"#, "rateLimits.net.bandwidth allows more"),
            // A slower rate with a bucket larger than the operator's holds a larger burst.
            (#"{"disk": {"bandwidth": {"size": 16777216, "refillTime": 10000}}}"#, "rateLimits.disk.bandwidth allows more"),
            // More at the start than the operator's bucket and burst together.
            (#"{"disk": {"bandwidth": {"size": 1024, "oneTimeBurst": 9436161}}}"#, "rateLimits.disk.bandwidth allows more"),
        ]
        // A burst above the operator's, within its bucket and burst together: never more in any window.
        let bursty = try RateLimitsBody.effective(asked: try body(#"{"disk": {"bandwidth": {"size": 1048576, "oneTimeBurst": 8388608}}}"#),
                                                  ceiling: ceiling, networked: true)
        #expect(bursty?.disk.bandwidth == bucket(1 << 20, burst: 8 << 20))
        for (json, message) in refused {
            #expect(throws: APIError.self, "\(json)") {
                do { _ = try RateLimitsBody.effective(asked: try body(json), ceiling: ceiling, networked: true) } catch let e as APIError {
                    #expect(e.status == 400 && e.message.contains(message), "\(e.message)")
                    throw e
                }
            }
        }
    }

    @Test func badLimitsGet400sNamingTheField() async throws {
        let server = try await TestServer.start(tenants: [Tenant(name: "acme", apiKeys: [Self.key])], configure: {
            $0.limits = Sandbox.Limits(disk: RateLimit(operations: TokenBucket.Limit(size: 500)))
        })
        defer { Task { await server.stop() } }
        let cases: [(String, String)] = [
            // A misspelt field is an error, not an unlimited sandbox.
            (#"{"disk": {"bandwith": {"size": 1}}}"#, "'rateLimits.disk.bandwith': unknown field"),
            (#"{"disks": {}}"#, "'rateLimits.disks': unknown field"),
            (#"{"disk": {"bandwidth": {"size": 1, "burst": 5}}}"#, "'rateLimits.disk.bandwidth.burst': unknown field"),
            (#"{"disk": {"bandwidth": {"size": -1}}}"#, "'rateLimits.disk.bandwidth.size' must be a non-negative integer"),
            (#"{"disk": {"bandwidth": {"refillTime": 100}}}"#, "'rateLimits.disk.bandwidth.size' is required"),
            (#"{"disk": {"bandwidth": {"size": 0}}}"#, "rateLimits.disk.bandwidth: size must be 1 to"),
            (#"{"disk": {"ops": {"size": 10, "refillTime": 0}}}"#, "rateLimits.disk.ops: size must be 1 to"),
            (#"{"disk": {}}"#, "rateLimits.disk needs a bandwidth or an ops bucket"),
            (#"{"disk": {"ops": {"size": 1000}}}"#, "rateLimits.disk.ops allows more than this service's limit (size 500 per 1000 ms"),
        ]
        for (limits, message) in cases {
            let r = try await server.request("POST", "/sandboxes", key: Self.key, body: #"{"templateID": "base", "rateLimits": \#(limits)}"#)
            #expect(r.status == 400, "\(limits): \(r.status) \(r.text)")
            #expect((try? r.json(ErrorReply.self))?.message.contains(message) == true, "\(limits): \(r.text)")
        }
        // Within the ceiling, the create goes on to the template (none here: 404, not a 400).
        let fine = try await server.request("POST", "/sandboxes", key: Self.key, body: #"{"templateID": "base", "rateLimits": {"disk": {"ops": {"size": 100}}}}"#)
        #expect(fine.status == 404, "\(fine.text)")
    }
}
