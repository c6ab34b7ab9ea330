import Glibc
@testable import KilnService
import Testing

@Suite struct TenantsTests {
    func load(_ json: String) throws(TenantsError) -> Tenants {
        let dir = Temp.directory("kiln-tenants")
        defer { Temp.remove(dir) }
        Temp.write(dir + "/tenants.json", json)
        return try Tenants.load(path: dir + "/tenants.json")
    }

    func error(_ json: String) -> String {
        do { _ = try load(json); return "" } catch { return error.description }
    }

    @Test func aValidFileMapsEachKeyToItsTenant() throws {
        let t = try load("""
            {"tenants": [{"name": "acme", "apiKeys": ["acme-key-1234", "acme-key-5678"], "maxSandboxes": 3, "maxMemoryMiB": 4096},
                         {"name": "globex", "apiKeys": ["globex-key-1234"]}]}
            """)
        #expect(t.all.map(\.name) == ["acme", "globex"])
        #expect(t.tenant(forKey: "acme-key-5678")?.name == "acme")
        #expect(t.tenant(forKey: "acme-key-1234")?.maxSandboxes == 3)
        // Limits left out take the defaults.
        #expect(t.tenant(forKey: "globex-key-1234") == Tenant(name: "globex", apiKeys: ["globex-key-1234"], maxSandboxes: 20, maxMemoryMiB: 8192))
    }

    @Test func unknownKeysBelongToNobody() throws {
        let t = try Tenants([Tenant(name: "acme", apiKeys: ["acme-key-1234"])])
        #expect(t.tenant(forKey: "acme-key-123") == nil)
        #expect(t.tenant(forKey: "acme-key-12345") == nil)
        #expect(t.tenant(forKey: "ACME-KEY-1234") == nil)
        #expect(t.tenant(forKey: "") == nil)
    }

    @Test func duplicatesAreRefused() {
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": ["key-aaaa-1"]}, {"name": "a", "apiKeys": ["key-bbbb-1"]}]}"#)
            .contains("named twice"))
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": ["key-aaaa-1"]}, {"name": "b", "apiKeys": ["key-aaaa-1"]}]}"#)
            .contains("another tenant"))
    }

    @Test func badTenantsAreRefusedWithTheReason() {
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": ["short"]}]}"#).contains("shorter than 8"))
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": []}]}"#).contains("no API key"))
        #expect(error(#"{"tenants": []}"#).contains("no tenant"))
        #expect(error(#"{"tenants": [{"name": "a b", "apiKeys": ["key-aaaa-1"]}]}"#).contains("printable ASCII"))
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": ["key-aaaa-1"], "maxSandboxes": -1}]}"#).contains("negative"))
        // A wrong-typed field is named with its path.
        #expect(error(#"{"tenants": [{"name": "a", "apiKeys": "key-aaaa-1"}]}"#).contains("apiKeys' must be an array"))
        #expect(error(#"{"tenants": [{"apiKeys": ["key-aaaa-1"]}]}"#).contains("name' is required"))
        #expect(error("not json").contains("not valid JSON"))
        #expect(error("").contains("not valid JSON") || error("").contains("not a valid tenants file"))
    }

    @Test func aMissingFileIsReported() {
        #expect(throws: TenantsError.self) { try Tenants.load(path: "/nonexistent/kiln-tenants.json") }
    }

    @Test func theLocalTenantKeepsItsGeneratedKey() throws {
        let dir = Temp.directory("kiln-local")
        defer { Temp.remove(dir) }
        let (first, generated) = try Tenants.local(stateDirectory: dir)
        let key = try #require(generated)
        #expect(key.hasPrefix("kiln_") && key.count > 20)
        #expect(first.tenant(forKey: key)?.name == "local")
        let (second, again) = try Tenants.local(stateDirectory: dir)
        #expect(again == nil)
        #expect(second.tenant(forKey: key)?.name == "local")
    }
}
