import Glibc
import KilnTestSupport
import Testing

/// `kiln image` as a user runs it, against a real registry on loopback, with its own store
/// (KILN_CACHE_DIR).
@Suite(.serialized, .blocking) struct ImageCommandTests {
    let cache: String
    init() throws { cache = try TestImages.temporaryDirectory("kiln-image-cli") }

    func kiln(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = try KilnProcess(["image"] + args, environment: ["KILN_CACHE_DIR": cache, "HOME": cache])
        p.closeInput()
        let status = try p.wait(seconds: 120)
        return (status, p.output, p.errorOutput)
    }

    @Test func pullListInspectRemovePrune() throws {
        let registry = try TestRegistry()
        defer { registry.stop() }
        try registry.push(TestImages.layout(), tag: "config", as: "app/config:v1")
        let ref = "\(registry.address)/app/config:v1"

        let pull = try kiln(["pull", ref])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(pull.stdout.hasPrefix(ref + " sha256:") && pull.stdout.hasSuffix("\n"))
        #expect(pull.stderr == "") // no progress when stderr is not a terminal

        let ls = try kiln(["ls"])
        let lines = ls.stdout.split(separator: "\n")
        #expect(lines.count == 2 && lines[0].hasPrefix("REFERENCE") && lines[1].hasPrefix(ref))
        #expect(lines[1].contains("linux/amd64"))

        let inspect = try kiln(["inspect", ref])
        #expect(inspect.status == 0)
        for field in [#""reference" : "\#(ref)""#, #""platform" : "linux/amd64""#, #""User" : "1000:1000""#,
                      #""WorkingDir" : "/work""#, #""Entrypoint" : ["#, #""/bin/busybox""#, #""KILN_TEST=yes""#, #""mediaType" : "application/vnd.oci.image.layer.v1.tar+gzip""#] {
            #expect(inspect.stdout.contains(field), "\(field) in \(inspect.stdout)")
        }

        #expect(try kiln(["rm", ref]) == (0, ref + "\n", ""))
        #expect(try kiln(["rm", ref]) == (1, "", "kiln: no image \(ref) in the store\n"))
        #expect(try kiln(["inspect", ref]).stderr.hasPrefix("kiln: no image \(ref) in the store"))
        let prune = try kiln(["prune"])
        #expect(prune.status == 0 && prune.stdout.hasPrefix("removed 3 blobs, ")) // manifest, config, layer
        #expect(TestFiles.list(cache + "/oci/blobs/sha256").isEmpty)
    }

    @Test func credentialsFromAConfigFile() throws {
        let registry = try TestRegistry(auth: .basic(user: "alice", password: "secret"))
        defer { registry.stop() }
        try registry.push(TestImages.layout(), tag: "scratch", as: "scratch:latest", credentials: "alice:secret")
        let ref = "\(registry.address)/scratch"
        #expect(try kiln(["pull", ref]) == (1, "", "kiln: pull \(ref):latest: \(registry.address): not authorized to pull scratch: the registry wants a user name and password (--registry-auth)\n"))
        let file = cache + "/auth.json"
        let json = #"{"auths": {"\#(registry.address)": {"auth": "YWxpY2U6c2VjcmV0"}}}"# // alice:secret
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = json.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        let pulled = try kiln(["pull", ref, "--registry-auth", file])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(try kiln(["pull", ref, "--registry-auth", cache + "/missing.json"]).stderr.hasPrefix("kiln: registry credentials \(cache)/missing.json: "))
    }

    @Test func importAndUsageErrors() throws {
        let imported = try kiln(["import", TestImages.layout(), "--name", "kiln-test/layered:layered"])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.hasPrefix("docker.io/kiln-test/layered:layered sha256:"))
        #expect(try kiln(["ls"]).stdout.contains("docker.io/kiln-test/layered:layered"))
        let archive = String(try TestImages.layout().dropLast("/oci".count)) + "/config-docker.tar"
        #expect(try kiln(["import", archive]).stdout.hasPrefix("docker.io/kiln-test/saved:v1 sha256:"))

        let bad = try kiln(["pull", "Bad Ref"])
        #expect(bad.status == 2 && bad.stderr.split(separator: "\n").count == 1)
        #expect(bad.stderr.hasPrefix("kiln: 'Bad Ref' is not an image reference"))
        #expect(try kiln(["frobnicate"]).status == 2)
        #expect(try kiln(["pull"]).status == 2)
    }
}
