import Glibc
@testable import Images
import KilnTestSupport
import Testing

/// A fresh store in a temporary directory.
func temporaryStore() throws -> ContentStore {
    try ContentStore(root: TestImages.temporaryDirectory("kiln-store") + "/oci")
}

@Suite(.blocking) struct StoreTests {
    @Test func blobsAreVerifiedBeforeTheyAppear() throws {
        let store = try temporaryStore()
        let bytes = Array("hello".utf8)
        let digest = try store.put(bytes)
        #expect(digest == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        #expect(store.has(digest, size: 5))
        #expect(try store.read(digest) == bytes)

        // Wrong content under a digest: refused, and nothing left behind.
        let other = "sha256:" + String(repeating: "0", count: 64)
        #expect(throws: StoreError.self) { try store.put(bytes, digest: other) }
        #expect(!store.has(other))
        #expect(TestFiles.list(store.root + "/ingest").isEmpty)
    }

    @Test func sizeIsEnforcedWhileWriting() throws {
        let store = try temporaryStore()
        let digest = ContentStore.digest(of: Array("abcdef".utf8))
        let writer = try store.ingest(digest: digest, size: 3)
        #expect(throws: StoreError.self) { try Array("abcdef".utf8).withUnsafeBytes { try writer.write($0) } }
        #expect(throws: StoreError.self) { try writer.commit() }
        #expect(!store.has(digest))
        #expect(TestFiles.list(store.root + "/ingest").isEmpty)

        let short = try store.ingest(digest: digest, size: 10)
        try Array("abcdef".utf8).withUnsafeBytes { try short.write($0) }
        do { try short.commit(); Issue.record("committed") } catch {
            #expect(error.description.contains("ended after 6 of 10 bytes"))
        }
        #expect(TestFiles.list(store.root + "/ingest").isEmpty)
    }

    @Test func crashLeftoversAreSweptAndUnused() throws {
        let store = try temporaryStore()
        let digest = ContentStore.digest(of: Array("x".utf8))
        // A writer that died: its temp file stays, unlocked.
        let fd = open(store.root + "/ingest/leftover.partial", O_WRONLY | O_CREAT, 0o644)
        close(fd)
        // A live writer keeps its file.
        let live = try store.ingest(digest: digest, size: 1)
        #expect(!store.has(digest))
        let reopened = try ContentStore(root: store.root)
        #expect(TestFiles.list(store.root + "/ingest").count == 1)
        try Array("x".utf8).withUnsafeBytes { try live.write($0) }
        try live.commit()
        #expect(reopened.has(digest, size: 1))
        #expect(TestFiles.list(store.root + "/ingest").isEmpty)
    }

    @Test func referencesListRemoveAndPrune() throws {
        let store = try temporaryStore()
        let config = try store.put(Array(#"{"architecture":"amd64","os":"linux"}"#.utf8))
        let shared = try store.put(Array("shared layer".utf8))
        let onlyA = try store.put(Array("layer of a".utf8))
        let stray = try store.put(Array("nobody's".utf8))
        func manifest(_ layers: [String]) throws -> String {
            let m = #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(config)","size":37},"layers":["#
                + (try layers.map { #"{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"\#($0)","size":\#(try store.read($0).count)}"# }).joined(separator: ",") + "]}"
            return try store.put(Array(m.utf8))
        }
        let a = try ImageReference(parsing: "127.0.0.1:1/a"), b = try ImageReference(parsing: "127.0.0.1:1/b:v2")
        try store.tag(a, manifest: try manifest([shared, onlyA]), platform: nil)
        try store.tag(b, manifest: try manifest([shared]), platform: Platform(architecture: "amd64", os: "linux"))
        #expect(try store.list().map(\.reference) == ["127.0.0.1:1/a:latest", "127.0.0.1:1/b:v2"])

        let image = try #require(try store.image(for: a))
        #expect(image.layers.map(\.path) == [store.blobPath(shared), store.blobPath(onlyA)])
        #expect(image.platform == Platform(architecture: "amd64", os: "linux")) // from the config
        #expect(try store.image(for: ImageReference(parsing: "127.0.0.1:1/c")) == nil)

        #expect(try store.prune() == ContentStore.PruneResult(blobsRemoved: 1, bytesRemoved: 8))
        #expect(!store.has(stray))
        #expect(try store.remove(a))
        #expect(try !store.remove(a))
        let pruned = try store.prune()
        #expect(pruned.blobsRemoved == 2) // a's manifest and its own layer; the shared layer stays for b
        #expect(store.has(shared) && !store.has(onlyA))
        #expect(try store.image(for: b)?.layers.count == 1)
    }
}

@Suite struct CredentialsTests {
    @Test func dockerConfig() throws {
        let json = #"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjN0Og=="}, "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}, "credsStore": "desktop"}"#
        let creds = try RegistryCredentials.parse(Array(json.utf8))
        #expect(creds.credential(for: "127.0.0.1:5000") == RegistryCredential(username: "alice", password: "s3cr3t:"))
        #expect(creds.credential(for: "docker.io") == RegistryCredential(username: "bob", password: "pw"))
        #expect(creds.credential(for: "127.0.0.1:5001") == nil)
        #expect(throws: CredentialsError.self) { try RegistryCredentials.parse(Array(#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#.utf8)) }
        #expect(throws: CredentialsError.self) { try RegistryCredentials.parse(Array("[]".utf8)) }
    }

    @Test func configPathOrder() throws {
        #expect(RegistryCredentials.configPath(explicit: "/x.json", dockerConfig: "/d", home: "/h") == "/x.json")
        #expect(RegistryCredentials.configPath(explicit: nil, dockerConfig: "/d", home: "/h") == "/d/config.json")
        #expect(RegistryCredentials.configPath(explicit: nil, dockerConfig: nil, home: "/h") == "/h/.docker/config.json")
        #expect(throws: CredentialsError.self) { try RegistryCredentials.load(path: "/nonexistent/config.json", required: true) }
        #expect(try RegistryCredentials.load(path: "/nonexistent/config.json", required: false).byHost.isEmpty)
    }

    @Test func challenges() throws {
        let c = try #require(AuthChallenge(#"Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:a/b:pull""#))
        #expect(c.scheme == "bearer")
        #expect(c.parameters == ["realm": "http://127.0.0.1:9/token", "service": "reg", "scope": "repository:a/b:pull"])
        #expect(AuthChallenge(#"Basic realm="kiln-test""#) == AuthChallenge(scheme: "basic", parameters: ["realm": "kiln-test"]))
        #expect(AuthChallenge("") == nil)
    }

    @Test func plainHTTPOnlyForLoopbackAndInsecure() {
        #expect(Registry.usesPlainHTTP("127.0.0.1:5000", insecure: []))
        #expect(Registry.usesPlainHTTP("localhost", insecure: []))
        #expect(Registry.usesPlainHTTP("[::1]:5000", insecure: []))
        #expect(!Registry.usesPlainHTTP("registry.example", insecure: []))
        #expect(!Registry.usesPlainHTTP("127.0.0.1.example:80", insecure: []))
        #expect(Registry.usesPlainHTTP("registry.example:5000", insecure: ["registry.example:5000"]))
        #expect(Registry.usesPlainHTTP("registry.example:5000", insecure: ["registry.example"]))
        #expect(!Registry.usesPlainHTTP("registry.example:5000", insecure: ["registry.example:6000"]))
    }
}
