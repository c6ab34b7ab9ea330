import FoundationEssentials
import Glibc
@testable import KilnService
import Testing

/// The control API over real HTTP on loopback, without VMs: authentication, E2B's error bodies,
/// and the answers for sandboxes that do not exist or belong to someone else.
@Suite struct ControlAPITests {
    static let acme = "acme-key-1234"
    static let globex = "globex-key-5678"
    static let initech = "initech-key-9012"
    /// Paused sandboxes, recovered from their records (no VM behind them): two of globex, and
    /// one of initech that a test kills.
    static let pausedID = "iglobexpaused0000000"
    static let pagedID = "iglobexpaged00000000"
    static let doomedID = "iinitechdoomed000000"

    static func record(_ id: String, tenant: String = "globex") -> SandboxRecord {
        SandboxRecord(id: id, tenant: tenant, templateID: "base", alias: "base", clientID: "kiln", startedAt: 1_700_000_000,
                      endAt: 1_700_000_300, metadata: ["owner": "globex", "app": "a b"], envVars: [:], accessToken: "token-of-\(id)",
                      autoPause: false, cpuCount: 1, memoryMB: 256, diskSizeMB: 1024, state: .paused, runtimeDirectory: nil)
    }

    /// One server for the suite (its tests run in parallel against it).
    static let shared = SharedServer {
        try await TestServer.start(
            tenants: [Tenant(name: "acme", apiKeys: [acme], maxSandboxes: 3, maxMemoryMiB: 4096),
                      Tenant(name: "globex", apiKeys: [globex]), Tenant(name: "initech", apiKeys: [initech], maxSandboxes: 0)],
            seed: [record(pausedID), record(pagedID), record(doomedID, tenant: "initech")])
    }
    var server: TestServer { get async throws { try await Self.shared.get() } }

    func expectError(_ r: RawHTTP.Response, _ status: Int, containing text: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "\(r.status) \(r.text)", sourceLocation: sourceLocation)
        #expect(r.headers["content-type"] == "application/json", sourceLocation: sourceLocation)
        let body = try? r.json(ErrorReply.self)
        #expect(body?.code == status, "body \(r.text)", sourceLocation: sourceLocation)
        if let text { #expect(body?.message.contains(text) == true, "body \(r.text)", sourceLocation: sourceLocation) }
    }

    @Test func aMissingKeyIs401() async throws {
        let s = try await server
        expectError(try await s.request("GET", "/v2/sandboxes"), 401, containing: "X-API-KEY")
        expectError(try await s.request("POST", "/sandboxes", body: #"{"templateID":"base"}"#), 401)
        expectError(try await s.request("GET", "/v2/sandboxes", headers: [("x-api-key", "")]), 401)
    }

    @Test func aWrongKeyIs401() async throws {
        let s = try await server
        expectError(try await s.request("GET", "/v2/sandboxes", key: "acme-key-123"), 401, containing: "invalid API key")
        expectError(try await s.request("DELETE", "/sandboxes/\(Self.pausedID)", key: "nobody-at-all"), 401)
        // The key also works as a bearer token, as the SDK's access-token path sends it.
        #expect(try await s.request("GET", "/v2/sandboxes", headers: [("authorization", "Bearer \(Self.acme)")]).status == 200)
    }

    @Test func malformedJSONIs400() async throws {
        let s = try await server
        expectError(try await s.request("POST", "/v2/sandboxes", key: Self.acme, body: #"{"templateID": "#), 400, containing: "not valid JSON")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: "[]"), 400)
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: ""), 400, containing: "JSON body")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, headers: [("content-type", "text/plain")], body: "{}"), 400, containing: "application/json")
    }

    @Test func aWrongTypedFieldIs400NamingIt() async throws {
        let s = try await server
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": 5}"#), 400, containing: "'templateID' must be a string")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "timeout": "long"}"#), 400, containing: "'timeout' must be an integer")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "metadata": {"a": 1}}"#), 400, containing: "'metadata.a' must be a string")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"timeout": 5}"#), 400, containing: "'templateID' is required")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "timeout": -1}"#), 400, containing: "negative")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "../etc"}"#), 400, containing: "'templateID' needs a template name")
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "envVars": {"A=B": "x"}}"#), 400,
                    containing: "'envVars' needs NAME=VALUE with a non-empty NAME, got 'A=B=x'")
        expectError(try await s.request("POST", "/sandboxes/\(Self.pausedID)/timeout", key: Self.globex, body: #"{"timeout": 1.5}"#), 400, containing: "'timeout'")
    }

    @Test func aBodyOver1MiBIsRefused() async throws {
        let s = try await server
        let big = #"{"templateID": "base", "metadata": {"pad": ""# + String(repeating: "x", count: 1 << 20) + #""}}"#
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: big), 413, containing: "larger than")
        // The connection was drained: the server still answers.
        #expect(try await s.request("GET", "/v2/sandboxes", key: Self.acme).status == 200)
    }

    @Test func aTenantAtItsLimitIs429BeforeItsTemplateIsLookedUp() async throws {
        let s = try await server
        // initech's limit is 0 running sandboxes: no template is resolved (nor built) for it.
        expectError(try await s.request("POST", "/sandboxes", key: Self.initech, body: #"{"templateID": "base"}"#), 429, containing: "limit of 0")
        expectError(try await s.request("POST", "/sandboxes", key: Self.initech, body: #"{"templateID": "no-such-template"}"#), 429)
    }

    @Test func anUnknownTemplateIs404() async throws {
        let s = try await server
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "no-such-template"}"#), 404, containing: "no-such-template")
    }

    @Test func anUnknownSandboxIs404ForEveryOperation() async throws {
        let s = try await server
        let id = "inosuchsandbox000000"
        expectError(try await s.request("GET", "/sandboxes/\(id)", key: Self.acme), 404, containing: id)
        expectError(try await s.request("DELETE", "/sandboxes/\(id)", key: Self.acme), 404, containing: id)
        expectError(try await s.request("POST", "/sandboxes/\(id)/timeout", key: Self.acme, body: #"{"timeout": 30}"#), 404, containing: id)
        expectError(try await s.request("POST", "/sandboxes/\(id)/refreshes", key: Self.acme, body: #"{"duration": 30}"#), 404, containing: id)
        expectError(try await s.request("POST", "/sandboxes/\(id)/pause", key: Self.acme), 404, containing: id)
        expectError(try await s.request("POST", "/sandboxes/\(id)/resume", key: Self.acme, body: "{}"), 404, containing: id)
        expectError(try await s.request("POST", "/sandboxes/\(id)/connect", key: Self.acme, body: #"{"timeout": 30}"#), 404, containing: id)
        expectError(try await s.request("GET", "/sandboxes/\(id)/metrics", key: Self.acme), 404, containing: id)
        expectError(try await s.request("GET", "/sandboxes/\(id)/unknown-route", key: Self.acme), 404)
        expectError(try await s.request("GET", "/templates", key: Self.acme), 404)
    }

    @Test func anotherTenantsSandboxIsAnsweredExactlyAsAnUnknownOne() async throws {
        let s = try await server
        let theirs = Self.pausedID, unknown = "iunknownsandbox00000"
        func same(_ method: String, _ suffix: String, body: String? = nil) async throws {
            let a = try await s.request(method, "/sandboxes/\(theirs)\(suffix)", key: Self.acme, body: body)
            let b = try await s.request(method, "/sandboxes/\(unknown)\(suffix)", key: Self.acme, body: body)
            #expect(a.status == 404 && b.status == 404, "\(method) \(suffix): \(a.status) \(b.status)")
            let replyA = try a.json(ErrorReply.self), replyB = try b.json(ErrorReply.self)
            #expect(replyA.code == replyB.code && replyA.message.replacing(theirs, with: "ID") == replyB.message.replacing(unknown, with: "ID"),
                    "\(a.text) vs \(b.text)")
            #expect(a.headers == b.headers)
        }
        try await same("GET", "")
        try await same("GET", "/metrics")
        try await same("DELETE", "")
        try await same("POST", "/timeout", body: #"{"timeout": 10}"#)
        try await same("POST", "/pause")
        try await same("POST", "/connect", body: #"{"timeout": 10}"#)
        // acme's lists do not show it; globex's do.
        #expect(try await s.request("GET", "/v2/sandboxes", key: Self.acme).text == "[]")
        let listed = try await s.request("GET", "/v2/sandboxes?state=paused", key: Self.globex)
        #expect(listed.status == 200 && listed.text.contains(theirs), "\(listed.text)")
        #expect(!listed.text.contains("token-of-"), "a listing leaks access tokens: \(listed.text)")
        // It is still there for its owner.
        let own = try await s.request("GET", "/sandboxes/\(theirs)", key: Self.globex)
        #expect(own.status == 200 && own.text.contains(#""state":"paused""#), "\(own.text)")
        // A paused sandbox costs the host nothing: no metric samples.
        #expect(try await s.request("GET", "/sandboxes/\(theirs)/metrics", key: Self.globex).text == "[]")
    }

    @Test func theOwnerSeesAndKillsAPausedSandbox() async throws {
        let s = try await server
        struct Detail: Decodable { var sandboxID: String; var templateID: String; var state: String; var metadata: [String: String]; var startedAt: String; var endAt: String; var memoryMB: Int }
        let d = try await s.request("GET", "/sandboxes/\(Self.doomedID)", key: Self.initech).json(Detail.self)
        #expect(d.sandboxID == Self.doomedID && d.state == "paused" && d.metadata["app"] == "a b" && d.memoryMB == 256)
        #expect(d.startedAt == "2023-11-14T22:13:20.000Z" && d.endAt == "2023-11-14T22:18:20.000Z")
        // Metadata filters match on decoded keys and values.
        let filtered = try await s.request("GET", "/v2/sandboxes?state=paused&metadata=app%3Da%2520b", key: Self.initech)
        #expect(filtered.text.contains(Self.doomedID), "\(filtered.text)")
        #expect(try await s.request("GET", "/v2/sandboxes?state=paused&metadata=app%3Dother", key: Self.initech).text == "[]")
        // v1 lists running sandboxes only.
        #expect(try await s.request("GET", "/sandboxes", key: Self.initech).text == "[]")
        expectError(try await s.request("POST", "/sandboxes/\(Self.doomedID)/pause", key: Self.initech), 409, containing: "already paused")
        #expect(try await s.request("DELETE", "/sandboxes/\(Self.doomedID)", key: Self.initech).status == 204)
        expectError(try await s.request("GET", "/sandboxes/\(Self.doomedID)", key: Self.initech), 404)
        #expect(access(s.stateDirectory + "/sandboxes/\(Self.doomedID).json", F_OK) != 0, "the record outlived the kill")
    }

    @Test func listingsValidateTheirQuery() async throws {
        let s = try await server
        expectError(try await s.request("GET", "/v2/sandboxes?state=sleeping", key: Self.acme), 400, containing: "sleeping")
        expectError(try await s.request("GET", "/v2/sandboxes?limit=0", key: Self.acme), 400, containing: "limit")
        expectError(try await s.request("GET", "/v2/sandboxes?limit=many", key: Self.acme), 400, containing: "limit")
        expectError(try await s.request("GET", "/v2/sandboxes?nextToken=nope", key: Self.acme), 400, containing: "nextToken")
        struct Listed: Decodable { var sandboxID: String }
        let page = try await s.request("GET", "/v2/sandboxes?state=paused&limit=1", key: Self.globex)
        let first = try page.json([Listed].self)
        #expect(page.status == 200 && first.count == 1, "\(page.text)")
        let token = try #require(page.headers["x-next-token"], "two paused sandboxes, one per page")
        do {
            let next = try await s.request("GET", "/v2/sandboxes?state=paused&limit=1&nextToken=\(token)", key: Self.globex).json([Listed].self)
            #expect(next.map(\.sandboxID) == [token] && token != first.first?.sandboxID)
        }
    }

    @Test func healthAndMetricsAnswer() async throws {
        let s = try await server
        #expect(try await s.request("GET", "/health").status == 204)
        _ = try await s.request("GET", "/v2/sandboxes", key: Self.acme)
        let m = try await s.request("GET", "/metrics", key: Self.acme)
        #expect(m.status == 200 && m.text.contains("kiln_"), "\(m.text)")
        // The list above was timed, under its route's name.
        let listed = m.text.split(separator: "\n").first { $0.hasPrefix("kiln_api_request_seconds_count{route=\"GET /v2/sandboxes\"} ") }
        #expect(listed.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(m.text)")
        expectError(try await s.request("GET", "/metrics"), 401)
    }

    @Test func anEnvdRequestForAnUnknownSandboxIs502() async throws {
        let s = try await server
        struct Reply: Decodable { var code: Int; var message: String; var sandboxId: String }
        for (method, path) in [("GET", "/health"), ("POST", "/process.Process/Start"), ("GET", "/files?path=/etc/hostname")] {
            let r = try await s.request(method, path, headers: [("e2b-sandbox-id", "inosuchsandbox000000"), ("x-access-token", "whatever")],
                                        body: method == "POST" ? "{}" : nil)
            #expect(r.status == 502, "\(path): \(r.status) \(r.text)")
            #expect(try r.json(Reply.self).sandboxId == "inosuchsandbox000000")
        }
        // A paused sandbox reads as not reachable; a wrong or missing access token is refused, as envd does.
        let paused = try await s.request("GET", "/health", headers: [("e2b-sandbox-id", Self.pausedID), ("x-access-token", "token-of-\(Self.pausedID)")])
        #expect(paused.status == 502, "\(paused.text)")
        let wrongToken = try await s.request("GET", "/health", headers: [("e2b-sandbox-id", Self.pausedID), ("x-access-token", "guess")])
        #expect(wrongToken.status == 401, "\(wrongToken.text)")
        let noToken = try await s.request("GET", "/health", headers: [("e2b-sandbox-id", Self.pausedID)])
        #expect(noToken.status == 401, "\(noToken.text)")
    }
}
