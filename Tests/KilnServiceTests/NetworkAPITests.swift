import FoundationEssentials
import Glibc
@testable import KilnService
import KilnNet
import Testing

/// E2B's network fields over the control API, without VMs: what a create's `allow_internet_access`
/// and `network` become, the errors bad rules get (naming the field), and `PUT .../network` on a
/// paused sandbox (its record changes; the rules apply at resume). A sandbox whose egress follows
/// them: Tests/e2b/test_network.py.
@Suite struct NetworkAPITests {
    static let acme = "acme-key-1234"
    /// Paused sandboxes of acme (no VM behind them): one with a network, one without.
    static let withNetwork = "inetworked0000000000"
    static let without = "inotnetworked0000000"

    static let shared = SharedServer {
        func record(_ id: String) -> SandboxRecord {
            SandboxRecord(id: id, tenant: "acme", templateID: "base", alias: "base", clientID: "kiln",
                          startedAt: 1_700_000_000, endAt: 4_000_000_000, metadata: [:], envVars: [:],
                          accessToken: "token", autoPause: false, cpuCount: 1, memoryMB: 256, diskSizeMB: 1024,
                          state: .paused, runtimeDirectory: nil)
        }
        var networked = record(withNetwork)
        networked.network = NetworkRecord(allowInternetAccess: true, policy: EgressPolicy(), index: nil)
        return try await TestServer.start(tenants: [Tenant(name: "acme", apiKeys: [acme])], seed: [networked, record(without)])
    }
    var server: TestServer { get async throws { try await Self.shared.get() } }

    func expectError(_ r: RawHTTP.Response, _ status: Int, containing text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "\(r.status) \(r.text)", sourceLocation: sourceLocation)
        let body = try? r.json(ErrorReply.self)
        #expect(body?.message.contains(text) == true, "body \(r.text)", sourceLocation: sourceLocation)
    }

    func policy(_ json: String) throws -> EgressPolicy? {
        try JSONDecoder().decode(NewSandboxRequest.self, from: Data(json.utf8)).egressPolicy()
    }

    @Test func theFieldsBecomeE2BsPolicy() throws {
        // Neither field: no network at all.
        #expect(try policy(#"{"templateID": "base"}"#) == nil)
        #expect(try policy(#"{"templateID": "base", "allow_internet_access": true}"#) == EgressPolicy(internet: true))
        // false is denyOut 0.0.0.0/0: nothing but what allowOut names.
        #expect(try policy(#"{"templateID": "base", "allow_internet_access": false, "network": {"allowOut": ["198.18.0.2"]}}"#)
                == EgressPolicy(internet: false, allow: [IPv4Range("198.18.0.2/32")!]))
        // network alone: open, with its rules.
        #expect(try policy(#"{"templateID": "base", "network": {"denyOut": ["8.8.8.0/24"], "allowPublicTraffic": true}}"#)
                == EgressPolicy(internet: true, deny: [IPv4Range("8.8.8.0/24")!]))
        // Domains in allowOut are domain rules (DNS and the Host/SNI proxy, docs/net.md "Domains").
        #expect(try policy(#"{"templateID": "base", "allow_internet_access": false, "network": {"allowOut": ["api.example.com", "*.pypi.org"]}}"#)
                == EgressPolicy(internet: false, domains: [DomainRule("api.example.com")!, DomainRule("*.pypi.org")!]))
        // Empty lists of the fields Kiln does not serve are no request for them.
        #expect(try policy(#"{"templateID": "base", "network": {"rules": null, "dnsServers": []}}"#) == EgressPolicy(internet: true))
    }

    @Test func badRulesAreRefusedWithTheFieldNamed() async throws {
        let s = try await server
        let cases: [(String, String)] = [
            (#"{"denyOut": ["300.1.1.1"]}"#, "network.denyOut: '300.1.1.1' is not an IPv4 address or CIDR"),
            (#"{"allowOut": ["10.0.0.0/33"]}"#, "network.allowOut: '10.0.0.0/33'"),
            (#"{"denyOut": ["api.example.com"]}"#, "deny rules take no domains"),
            (#"{"allowOut": ["*.*.example.com"]}"#, "network.allowOut: '*.*.example.com' is not"),
            (#"{"rules": {"api.example.com": [{"transform": {"headers": {"a": "b"}}}]}}"#, "network.rules is not supported"),
            (#"{"egressProxy": {"address": "1.2.3.4:8080"}}"#, "network.egressProxy is not supported"),
            (#"{"allowPublicTraffic": false}"#, "network.allowPublicTraffic: false is not supported"),
        ]
        for (network, message) in cases {
            let r = try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "network": \#(network)}"#)
            expectError(r, 400, containing: message)
        }
        let wrongType = try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "network": {"allowOut": "1.2.3.4"}}"#)
        #expect(wrongType.status == 400, "\(wrongType.text)")
    }

    @Test func withoutRootTheServiceRefusesANetworkAndSaysSo() async throws {
        // This test server has no launcher (as `kiln serve` not run as root): a network is refused
        // before any template is looked up.
        let s = try await server
        let r = try await s.request("POST", "/sandboxes", key: Self.acme, body: #"{"templateID": "base", "allow_internet_access": true}"#)
        expectError(r, 400, containing: "gives sandboxes no network")
    }

    @Test func anUpdateChangesThePausedSandboxsRulesAndIsShownInItsDetail() async throws {
        let s = try await server
        let r = try await s.request("PUT", "/sandboxes/\(Self.withNetwork)/network", key: Self.acme,
                                    body: #"{"allowOut": ["198.18.0.2"], "denyOut": ["0.0.0.0/0"]}"#)
        #expect(r.status == 204, "\(r.text)")
        struct Detail: Decodable {
            struct Network: Decodable { var allowOut: [String]; var denyOut: [String] }
            var allowInternetAccess: Bool?
            var network: Network?
        }
        let detail = try await s.request("GET", "/sandboxes/\(Self.withNetwork)", key: Self.acme).json(Detail.self)
        #expect(detail.network?.allowOut == ["198.18.0.2"])
        #expect(detail.network?.denyOut == ["0.0.0.0/0"])
        #expect(detail.allowInternetAccess == nil)
        // Kept in the record: a restarted service resumes it with these rules.
        let saved = try JSONDecoder().decode(SandboxRecord.self, from: Data(try FileIO.read(s.stateDirectory + "/sandboxes/\(Self.withNetwork).json")))
        #expect(saved.network?.policy == EgressPolicy(internet: true, allow: [IPv4Range("198.18.0.2/32")!], deny: [IPv4Range("0.0.0.0/0")!]))

        let bad = try await s.request("PUT", "/sandboxes/\(Self.withNetwork)/network", key: Self.acme, body: #"{"denyOut": ["nope"]}"#)
        expectError(bad, 400, containing: "network.denyOut: 'nope'")
        let none = try await s.request("PUT", "/sandboxes/\(Self.without)/network", key: Self.acme, body: #"{"allowOut": []}"#)
        expectError(none, 400, containing: "was created without a network")
        let unknown = try await s.request("PUT", "/sandboxes/iunknown000000000000/network", key: Self.acme, body: "{}")
        #expect(unknown.status == 404)
    }
}
