import FoundationEssentials
import Glibc
@testable import KilnService
import Sandbox
import Testing

/// The service with a real VM behind it: one sandbox from the default template (restored, about a
/// second), one guest process, the tenant's quota. Guest work is kept to that one process.
@Suite struct ServiceSandboxTests {
    static let kernel = "/var/cache/kiln/kernel/vmlinux"
    static let image = "/var/cache/kiln/images/default.ext4"
    static let key = "solo-key-1234"

    struct Created: Decodable { var sandboxID: String; var templateID: String; var envdAccessToken: String; var envdVersion: String; var clientID: String }
    struct EventResponse: Decodable {
        struct Event: Decodable {
            struct Start: Decodable { var pid: Int }
            struct Output: Decodable { var stdout: String?; var stderr: String? }
            struct End: Decodable { var exitCode: Int?; var exited: Bool?; var status: String? }
            var start: Start?
            var data: Output?
            var end: End?
        }
        var event: Event?
    }

    /// The envelopes of a Connect streaming response body: (flags, message).
    static func envelopes(_ body: [UInt8]) -> [(UInt8, [UInt8])] {
        var out: [(UInt8, [UInt8])] = []
        var i = 0
        while i + 5 <= body.count {
            let length = Int(body[i + 1]) << 24 | Int(body[i + 2]) << 16 | Int(body[i + 3]) << 8 | Int(body[i + 4])
            guard i + 5 + length <= body.count else { break }
            out.append((body[i], Array(body[(i + 5)..<(i + 5 + length)])))
            i += 5 + length
        }
        return out
    }

    @Test func aSandboxRunsAProcessThroughEnvdAndTheQuotaHolds() async throws {
        // Scripts/test.sh makes it before the tests; a bare `swift test` pays one boot here.
        let template = try await WarmPoolTests.template()
        let server = try await TestServer.start(tenants: [Tenant(name: "solo", apiKeys: [Self.key], maxSandboxes: 1)]) { name in
            guard name == "default" else { throw APIError(404, "template '\(name)' not found") }
            return template
        }
        do { try await runAndQuota(server) } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func runAndQuota(_ server: TestServer) async throws {
        let create = try await server.request("POST", "/v2/sandboxes", key: Self.key, body: #"{"templateID": "default", "timeout": 120, "metadata": {"test": "vm"}}"#)
        #expect(create.status == 201, "\(create.text)")
        let sandbox = try create.json(Created.self)
        #expect(sandbox.templateID == "default" && !sandbox.envdAccessToken.isEmpty)

        // The tenant may run one sandbox: a second create is refused until the first ends.
        let second = try await server.request("POST", "/v2/sandboxes", key: Self.key, body: #"{"templateID": "default"}"#)
        #expect(second.status == 429, "\(second.text)")
        #expect((try? second.json(ErrorReply.self))?.code == 429)

        struct Metric: Decodable { var cpuCount: Int; var memUsed: Int; var memTotal: Int; var timestampUnix: Int }
        let metrics = try await server.request("GET", "/sandboxes/\(sandbox.sandboxID)/metrics", key: Self.key).json([Metric].self)
        #expect(metrics.count == 1 && metrics[0].cpuCount >= 1 && metrics[0].memUsed > 0 && metrics[0].memTotal > 0, "\(metrics)")

        let listed = try await server.request("GET", "/sandboxes", key: Self.key)
        #expect(listed.text.contains(sandbox.sandboxID) && listed.text.contains(#""state":"running""#), "\(listed.text)")

        // envd's process.Process/Start as the SDK sends it: Connect streaming with the JSON codec.
        let envd = [("e2b-sandbox-id", sandbox.sandboxID), ("x-access-token", sandbox.envdAccessToken)]
        #expect(try await server.request("GET", "/health", headers: envd).status == 204)
        var message = Array(#"{"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi"]}}"#.utf8)
        var envelope: [UInt8] = [0]
        withUnsafeBytes(of: UInt32(message.count).bigEndian) { envelope += $0 }
        message = envelope + message
        let started = try await RawHTTP.request(port: server.port, "POST", "/process.Process/Start",
                                                headers: envd + [("content-type", "application/connect+json"), ("connect-protocol-version", "1")],
                                                body: message)
        #expect(started.status == 200 && started.headers["content-type"] == "application/connect+json", "\(started.status) \(started.text)")
        let frames = Self.envelopes(started.body)
        let events = frames.filter { $0.0 == 0 }.compactMap { try? JSONDecoder().decode(EventResponse.self, from: Data($0.1)).event }
        let pid = events.first?.start?.pid
        #expect(pid != nil && pid! > 0, "first event: \(events.first.map { "\($0)" } ?? "none")")
        let stdout = events.compactMap { $0.data?.stdout.flatMap { Data(base64Encoded: $0) } }.reduce(Data(), +)
        #expect(String(decoding: stdout, as: UTF8.self) == "hi\n")
        let end = events.last?.end
        #expect(end?.exitCode == 0 && end?.exited == true, "end: \(end.map { "\($0)" } ?? "none")")
        // The stream ends with Connect's end-of-stream envelope, without an error.
        #expect(frames.last?.0 == 0x02 && frames.last.map { String(decoding: $0.1, as: UTF8.self) } == "{}")

        #expect(try await server.request("DELETE", "/sandboxes/\(sandbox.sandboxID)", key: Self.key).status == 204)
        #expect(try await server.request("GET", "/health", headers: envd).status == 502)
        #expect(try await server.request("GET", "/sandboxes/\(sandbox.sandboxID)", key: Self.key).status == 404)
    }
}
