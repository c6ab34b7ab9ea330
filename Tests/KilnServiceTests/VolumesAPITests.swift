import FoundationEssentials
import Glibc
@testable import KilnService
import Testing

/// E2B's volumes over the control API, without VMs: create, list, get and delete, the tenant's
/// directory on the host, names, isolation between tenants, and the checks a create's
/// `volumeMounts` gets before any VM is started. A sandbox that mounts one: Tests/e2b/test_volumes.py.
@Suite struct VolumesAPITests {
    static let acme = "acme-key-1234"
    static let globex = "globex-key-5678"
    static let odd = "odd-key-90123"
    static let mounter = "mounter-key-4567"
    /// A paused sandbox of `mounter` whose record says it mounts `seededVolume` (no VM behind it).
    static let mountingID = "imountermounted00000"
    static let seededVolume = "vol-seeded0000000000"

    static let shared = SharedServer {
        var record = SandboxRecord(id: mountingID, tenant: "mounter", templateID: "base", alias: "base", clientID: "kiln",
                                   startedAt: 1_700_000_000, endAt: 1_700_000_300, metadata: [:], envVars: [:],
                                   accessToken: "token", autoPause: false, cpuCount: 1, memoryMB: 256, diskSizeMB: 1024,
                                   state: .paused, runtimeDirectory: nil)
        record.volumeMounts = [MountedVolume(volumeID: seededVolume, name: "seeded", path: "/data")]
        let s = try await TestServer.start(
            tenants: [Tenant(name: "acme", apiKeys: [acme]), Tenant(name: "globex", apiKeys: [globex]),
                      Tenant(name: "odd/../name", apiKeys: [odd]), Tenant(name: "mounter", apiKeys: [mounter])],
            seed: [record])
        // The volume that record names, as the service would have written it.
        let dir = s.stateDirectory + "/volumes/mounter"
        _ = mkdir(dir, 0o700)
        _ = mkdir(dir + "/" + seededVolume, 0o700)
        let v = VolumeRecord(id: seededVolume, name: "seeded", tenant: "mounter", createdAt: 1_700_000_000, token: "t")
        Temp.write(dir + "/\(seededVolume).json", String(decoding: try JSONEncoder().encode(v), as: UTF8.self))
        return s
    }
    var server: TestServer { get async throws { try await Self.shared.get() } }

    struct WithToken: Decodable { var volumeID: String; var name: String; var token: String }
    struct Listed: Decodable, Equatable { var volumeID: String; var name: String }

    func expectError(_ r: RawHTTP.Response, _ status: Int, containing text: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == status, "\(r.status) \(r.text)", sourceLocation: sourceLocation)
        let body = try? r.json(ErrorReply.self)
        #expect(body?.code == status, "body \(r.text)", sourceLocation: sourceLocation)
        if let text { #expect(body?.message.contains(text) == true, "body \(r.text)", sourceLocation: sourceLocation) }
    }

    func create(_ s: TestServer, _ name: String, key: String) async throws -> WithToken {
        let r = try await s.request("POST", "/volumes", key: key, body: #"{"name": "\#(name)"}"#)
        #expect(r.status == 201, "\(r.text)")
        return try r.json(WithToken.self)
    }

    func mode(_ path: String) -> (mode: mode_t, uid: uid_t, gid: gid_t)? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { return nil }
        return (st.st_mode & 0o7777, st.st_uid, st.st_gid)
    }

    @Test func createListGetAndDelete() async throws {
        let s = try await server
        let v = try await create(s, "data-1", key: Self.acme)
        #expect(v.name == "data-1" && v.volumeID.hasPrefix("vol-") && v.token.count == 48)
        // A directory of the service's, for this tenant only; as root it belongs to E2B's `user`.
        let dir = s.stateDirectory + "/volumes/acme/" + v.volumeID
        let made = try #require(mode(dir), "no directory \(dir)")
        #expect(made.mode == 0o700)
        if geteuid() == 0 { #expect(made.uid == 1000 && made.gid == 1000) }
        #expect(mode(s.stateDirectory + "/volumes/acme")?.mode == 0o700)

        let listed = try await s.request("GET", "/volumes", key: Self.acme).json([Listed].self)
        #expect(listed.contains(Listed(volumeID: v.volumeID, name: "data-1")), "\(listed)")
        let got = try await s.request("GET", "/volumes/\(v.volumeID)", key: Self.acme)
        #expect(got.status == 200, "\(got.text)")
        #expect(try got.json(WithToken.self).token == v.token)

        #expect(try await s.request("DELETE", "/volumes/\(v.volumeID)", key: Self.acme).status == 204)
        #expect(mode(dir) == nil, "the volume's files outlived its delete")
        expectError(try await s.request("GET", "/volumes/\(v.volumeID)", key: Self.acme), 404, containing: v.volumeID)
        expectError(try await s.request("DELETE", "/volumes/\(v.volumeID)", key: Self.acme), 404)
        let after = try await s.request("GET", "/volumes", key: Self.acme).text
        #expect(!after.contains(v.volumeID))
        // The name is free again.
        let again = try await create(s, "data-1", key: Self.acme)
        #expect(again.volumeID != v.volumeID)
    }

    @Test func namesAreValidatedAndUniquePerTenant() async throws {
        let s = try await server
        for bad in ["", "a b", "../x", "x/y", ".", "é", String(repeating: "n", count: 129)] {
            expectError(try await s.request("POST", "/volumes", key: Self.acme, body: #"{"name": "\#(bad)"}"#), 400, containing: "invalid volume name")
        }
        expectError(try await s.request("POST", "/volumes", key: Self.acme, body: #"{"name": 7}"#), 400, containing: "'name' must be a string")
        expectError(try await s.request("POST", "/volumes", key: Self.acme, body: "{}"), 400, containing: "'name' is required")
        expectError(try await s.request("POST", "/volumes", key: Self.acme), 400, containing: "JSON body")
        _ = try await create(s, "twice", key: Self.acme)
        expectError(try await s.request("POST", "/volumes", key: Self.acme, body: #"{"name": "twice"}"#), 409, containing: "already exists")
        // Another tenant has its own names.
        _ = try await create(s, "twice", key: Self.globex)
        expectError(try await s.request("GET", "/volumes", key: "not-a-key-at-all"), 401)
        expectError(try await s.request("PUT", "/volumes/x", key: Self.acme), 404)
    }

    @Test func aTenantNeverSeesAnothersVolume() async throws {
        let s = try await server
        let theirs = try await create(s, "globex-private", key: Self.globex)
        let unknown = "vol-00000000000000000000"
        for method in ["GET", "DELETE"] {
            let a = try await s.request(method, "/volumes/\(theirs.volumeID)", key: Self.acme)
            let b = try await s.request(method, "/volumes/\(unknown)", key: Self.acme)
            #expect(a.status == 404 && b.status == 404)
            let replyA = try a.json(ErrorReply.self), replyB = try b.json(ErrorReply.self)
            #expect(replyA.message.replacing(theirs.volumeID, with: "ID") == replyB.message.replacing(unknown, with: "ID"), "\(a.text) vs \(b.text)")
        }
        let mine = try await s.request("GET", "/volumes", key: Self.acme).text
        #expect(!mine.contains(theirs.volumeID))
        // Nor mounts it: its name is unknown to acme.
        expectError(try await s.request("POST", "/sandboxes", key: Self.acme,
                                        body: #"{"templateID": "base", "volumeMounts": [{"name": "globex-private", "path": "/data"}]}"#),
                    400, containing: "no volume named 'globex-private'")
        // Still there for its owner.
        #expect(try await s.request("GET", "/volumes/\(theirs.volumeID)", key: Self.globex).status == 200)
    }

    @Test func aTenantWhoseNameIsNoPathGetsItsOwnDirectory() async throws {
        let s = try await server
        let v = try await create(s, "v", key: Self.odd)
        #expect(mode(s.stateDirectory + "/volumes/odd%2F%2E%2E%2Fname/" + v.volumeID) != nil)
        #expect(mode(s.stateDirectory + "/volumes/name") == nil)
    }

    @Test func aCreatesVolumeMountsAreChecked() async throws {
        let s = try await server
        _ = try await create(s, "mountme", key: Self.globex)
        func mounts(_ json: String, autoPause: Bool = false) -> String {
            #"{"templateID": "base", "autoPause": \#(autoPause), "volumeMounts": \#(json)}"#
        }
        let cases: [(String, String)] = [
            (#"[{"name": "mountme", "path": "data"}]"#, "must be absolute"),
            (#"[{"name": "mountme", "path": "/"}]"#, "must not be /"),
            (#"[{"name": "mountme", "path": "/a/../etc"}]"#, "'..'"),
            (#"[{"name": "mountme", "path": "/a//b"}]"#, "empty components"),
            (#"[{"name": "mountme", "path": "/proc/x"}]"#, "must not be in /proc"),
            (#"[{"name": "mountme", "path": "/dev"}]"#, "must not be in /dev"),
            (#"[{"name": "mountme", "path": "/a"}, {"name": "mountme", "path": "/b"}]"#, "mounted twice"),
            (#"[{"name": "mountme", "path": "/a"}, {"name": "other", "path": "/a"}]"#, "given twice"),
            (#"[{"name": "no such", "path": "/a"}]"#, "invalid volume name"),
            (#"[{"name": "nosuch", "path": "/a"}]"#, "no volume named 'nosuch'"),
            (#"[{"name": "a", "path": "/a"}, {"name": "b", "path": "/b"}, {"name": "c", "path": "/c"}, {"name": "d", "path": "/d"}, {"name": "e", "path": "/e"}]"#,
             "at most 4 volumes"),
            (#"[{"name": "mountme"}]"#, "'volumeMounts.[0].path' is required"),
            (#"{"name": "mountme"}"#, "'volumeMounts' must be an array"),
        ]
        for (json, message) in cases {
            expectError(try await s.request("POST", "/sandboxes", key: Self.globex, body: mounts(json)), 400, containing: message)
        }
        expectError(try await s.request("POST", "/v2/sandboxes", key: Self.globex, body: mounts(#"[{"name": "mountme", "path": "/data"}]"#, autoPause: true)),
                    400, containing: "autoPause")
        // Valid mounts get as far as the template (which these tests do not have).
        expectError(try await s.request("POST", "/v2/sandboxes", key: Self.globex, body: mounts(#"[{"name": "mountme", "path": "/home/user/data"}]"#)),
                    404, containing: "template 'base'")
    }

    @Test func filesOfAnUnfinishedDeleteAreRemovedAtStart() async throws {
        let s = try await TestServer.start(tenants: [Tenant(name: "acme", apiKeys: [Self.acme])])
        let left = s.stateDirectory + "/volumes/acme/.deleting-vol-crashed"
        _ = mkdir(s.stateDirectory + "/volumes/acme", 0o700)
        _ = mkdir(left, 0o700)
        _ = mkdir(left + "/deep", 0o700)
        Temp.write(left + "/deep/file", "x")
        await s.manager.recover()
        #expect(mode(left) == nil)
        #expect(try await s.request("GET", "/volumes", key: Self.acme).text == "[]")
        await s.stop()
    }

    @Test func aMountedVolumeIsNotDeleted() async throws {
        let s = try await server
        let r = try await s.request("DELETE", "/volumes/\(Self.seededVolume)", key: Self.mounter)
        expectError(r, 409, containing: Self.mountingID)
        #expect(mode(s.stateDirectory + "/volumes/mounter/" + Self.seededVolume) != nil)
        // The sandbox's detail names its mounts, as E2B's SandboxDetail does.
        struct Detail: Decodable { var volumeMounts: [VolumeMountRequest]? }
        let d = try await s.request("GET", "/sandboxes/\(Self.mountingID)", key: Self.mounter).json(Detail.self)
        #expect(d.volumeMounts == [VolumeMountRequest(name: "seeded", path: "/data")])
        // Once the sandbox is gone, the volume can go.
        #expect(try await s.request("DELETE", "/sandboxes/\(Self.mountingID)", key: Self.mounter).status == 204)
        #expect(try await s.request("DELETE", "/volumes/\(Self.seededVolume)", key: Self.mounter).status == 204)
        #expect(mode(s.stateDirectory + "/volumes/mounter/" + Self.seededVolume) == nil)
    }
}
