@testable import Images
import Testing

@Suite struct ReferenceTests {
    func parse(_ s: String) throws -> ImageReference { try ImageReference(parsing: s) }

    @Test func dockerHubDefaults() throws {
        let r = try parse("busybox")
        #expect(r.host == "docker.io" && r.repository == "library/busybox" && r.tag == "latest" && r.digest == nil)
        #expect(r.description == "docker.io/library/busybox:latest")
        #expect(r.registryHost == "registry-1.docker.io")
        #expect(try parse("team/app:1.2").description == "docker.io/team/app:1.2")
        #expect(try parse("docker.io/busybox").description == "docker.io/library/busybox:latest")
    }

    @Test func hostsAndPorts() throws {
        #expect(try parse("localhost/app").host == "localhost")
        #expect(try parse("127.0.0.1:5000/a/b/c:v1").repository == "a/b/c")
        #expect(try parse("127.0.0.1:5000/a/b/c:v1").tag == "v1")
        #expect(try parse("registry.example:443/app").host == "registry.example:443")
        #expect(try parse("[::1]:5000/app:x").host == "[::1]:5000")
        // No '.' or ':' and not localhost: a path component, not a host.
        #expect(try parse("myhost/app").description == "docker.io/myhost/app:latest")
        // A port without a tag: the ':' belongs to the host.
        #expect(try parse("localhost:5000/app").tag == "latest")
    }

    @Test func digests() throws {
        let d = "sha256:" + String(repeating: "ab", count: 32)
        let r = try parse("127.0.0.1:5000/app@" + d)
        #expect(r.tag == nil && r.digest == d && r.manifestReference == d)
        let both = try parse("app:1@" + d)
        #expect(both.tag == "1" && both.digest == d && both.description == "docker.io/library/app:1@" + d)
    }

    @Test(arguments: ["", "UPPER", "app:", "app:-x", "app@sha256:12", "app@md5:" + String(repeating: "a", count: 32),
                      "a//b", "/app", "app/", "a b", "host:99999/app", "app:" + String(repeating: "t", count: 129),
                      "a..b", "-a", "a_", "app@", "ex\u{e9}mple/app", "bad_host.example/app", "[::1/app"])
    func rejected(_ text: String) {
        #expect(throws: ReferenceError.self) { try ImageReference(parsing: text) }
    }

    @Test func errorIsOneLine() {
        do { _ = try parse("Not/Valid"); Issue.record("parsed") } catch {
            #expect("\(error)" == "'Not/Valid' is not an image reference: 'Not' is not a repository name component (lowercase letters, digits, and '.', '_', '__', '-' between them)")
        }
    }

    /// FuzzImages found a reference whose canonical form (with ":latest" added) was too long to parse again.
    @Test func canonicalFormParsesAgain() throws {
        let longHost = String(repeating: "1.6.", count: 63) + "com"
        for text in [longHost + "/124.2aa", String(repeating: "a", count: 200) + "/" + String(repeating: "b/", count: 100) + "c", "1.6.1.6.1.0.127.2q.1.0.127.2q.0.q27.2q.0.q27.2aCharact.0.q27.2aCharacte6.1W.xp.6.1.6.1.0.127.2q.1.0.127.2q.0.q27.2q.0.q27.2aCharact.0.q27.2aCharacte6.1W.xpY2U27.2q.0.q27.2aCharact.0.1.0.127.2q.1.0.127.2q.0.q27.22aCharact.0.1.0.127.2q.1.0.127.2q.0.q27.2aCharact.0.q27.2aCharacte6.1W.xpY2U27.2q.0.Y2U27.2q.0.q27.2aCharact.0.1.0.127.2q.1.0.127.2q.0.q27.22aCharact.0.1.0.127.2q.1.0.127.2q.0.q27.2aCharact.0.q27.2aCharacte6.1W.xpY2U27.2q.0.q27.2aCharact.0.1.0.127.2q.1.0.127.2q.0.q27.2aCha1W.6c0aCharacte6.1.0/124.2aa"] {
            guard let r = try? parse(text) else { continue }
            #expect(try parse(r.description) == r, "\(text)")
        }
        #expect(throws: ReferenceError.self) { try parse(String(repeating: "1.", count: 130) + "x/app") } // a host over 255 bytes
    }

    @Test func separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a0"] { #expect(ImageReference.isPathComponent(ok), "\(ok)") }
        for bad in ["a___b", "a.-b", "a.", ".a", "a..b"] { #expect(!ImageReference.isPathComponent(bad), "\(bad)") }
    }
}
