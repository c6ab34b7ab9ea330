import FoundationEssentials
import Glibc
@testable import Images
import KilnTestSupport
import Synchronization
import Testing

/// Registries shared by the pull tests (a real docker-registry each), with the test images of
/// Tests/images/make-images.sh pushed: scratch, layered, config and multi (an index) on `plain`,
/// scratch on the authenticated ones.
enum Registries {
    static let plain = Result { () throws -> TestRegistry in
        let r = try TestRegistry()
        for tag in ["scratch", "layered", "config", "multi"] { try r.push(TestImages.layout(), tag: tag, as: tag + ":latest") }
        return r
    }
    static let basic = Result { () throws -> TestRegistry in
        let r = try TestRegistry(auth: .basic(user: "alice", password: "secret"))
        try r.push(TestImages.layout(), tag: "scratch", as: "scratch:latest", credentials: "alice:secret")
        return r
    }
    static let token = Result { () throws -> TestRegistry in
        let r = try TestRegistry(auth: .token(user: "alice", password: "secret", anonymousPull: true))
        try r.push(TestImages.layout(), tag: "scratch", as: "team/scratch:v1", credentials: "alice:secret")
        return r
    }
}

/// The digest of a tag's entry in the test layout's index.json.
func layoutDigest(_ tag: String) throws -> String {
    let index = try JSONDecoder().decode(ImageIndex.self, from: Data(ContentStore.readFile(TestImages.layout() + "/index.json", limit: 1 << 20)))
    return try #require(index.manifests.first { $0.annotations?[ImageImport.refNameAnnotation] == tag }).digest
}

func pull(_ text: String, into store: ContentStore, credentials: RegistryCredentials = .none, platform: Platform? = nil,
          events: EventLog? = nil) async throws -> StoredImage {
    var options = PullOptions(credentials: credentials)
    if let platform { options.platform = platform }
    let reference = try ImageReference(parsing: text)
    var progress: (@Sendable (PullEvent) -> Void)?
    if let events { progress = { events.add($0) } }
    return try await Registry.pull(reference, into: store, options: options, progress: progress)
}

/// The error a pull fails with, as the CLI prints it.
func pullError(_ text: String, into store: ContentStore, credentials: RegistryCredentials = .none, platform: Platform? = nil) async -> String {
    do { _ = try await pull(text, into: store, credentials: credentials, platform: platform); return "(no error)" }
    catch { return "\(error)" }
}

final class EventLog: Sendable {
    private let events = Mutex<[PullEvent]>([])
    func add(_ e: PullEvent) { events.withLock { $0.append(e) } }
    var started: Int { events.withLock { $0.filter { if case .started = $0 { true } else { false } }.count } }
    var cached: Int { events.withLock { $0.filter { if case .cached = $0 { true } else { false } }.count } }
}

/// Nothing half-written: no temp file in ingest/, and every blob file hashes to its name.
func expectClean(_ store: ContentStore, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(TestFiles.list(store.root + "/ingest").isEmpty, sourceLocation: sourceLocation)
    for name in TestFiles.list(store.blobDirectory) {
        let bytes = try ContentStore.readFile(store.blobDirectory + "/" + name, limit: 64 << 20)
        #expect(ContentStore.digest(of: bytes) == "sha256:" + name, sourceLocation: sourceLocation)
    }
}

@Suite(.serialized) struct RegistryTests {
    @Test func pullWithoutAuth() async throws {
        let registry = try Registries.plain.get()
        let store = try temporaryStore()
        let image = try await pull("\(registry.address)/config:latest", into: store)
        #expect(image.manifestDigest == (try layoutDigest("config")))
        #expect(image.platform == Platform(architecture: "amd64", os: "linux"))
        #expect(image.configuration.config?.Entrypoint == ["/bin/busybox", "echo"])
        #expect(image.configuration.config?.Cmd == ["hello", "from-config"])
        #expect(image.configuration.config?.WorkingDir == "/work")
        #expect(image.configuration.config?.User == "1000:1000")
        #expect(image.configuration.config?.Env?.contains("KILN_TEST=yes") == true)
        #expect(image.layers.count == 1 && image.layers[0].compression == .gzip)
        #expect(try store.list().map(\.reference) == ["\(registry.address)/config:latest"])
        try expectClean(store)

        let layered = try await pull("\(registry.address)/layered", into: store)
        #expect(layered.layers.count == 2)
        #expect(layered.layers.allSatisfy { store.has($0.descriptor.digest, size: $0.descriptor.size) })
    }

    @Test func indexPicksAMD64() async throws {
        let registry = try Registries.plain.get()
        let store = try temporaryStore()
        let image = try await pull("\(registry.address)/multi:latest", into: store)
        #expect(image.manifestDigest == (try layoutDigest("scratch")))
        #expect(image.indexDigest == (try layoutDigest("multi")))
        #expect(image.platform == Platform(architecture: "amd64", os: "linux"))
        let arm = try await pull("\(registry.address)/multi:latest", into: try temporaryStore(), platform: Platform(architecture: "arm64", os: "linux"))
        #expect(arm.manifestDigest == (try layoutDigest("scratch-arm64")))
        let none = await pullError("\(registry.address)/multi:latest", into: store, platform: Platform(architecture: "s390x", os: "linux"))
        #expect(none == "\(registry.address)/multi:latest: no linux/s390x image in the index (it has: linux/arm64, linux/amd64)")
    }

    @Test func pullByDigest() async throws {
        let registry = try Registries.plain.get()
        let digest = try layoutDigest("scratch")
        let store = try temporaryStore()
        let image = try await pull("\(registry.address)/scratch@\(digest)", into: store)
        #expect(image.manifestDigest == digest)
        // Pulled by tag, found by digest too.
        let tagged = try temporaryStore()
        _ = try await pull("\(registry.address)/scratch", into: tagged)
        #expect(try tagged.image(for: ImageReference(parsing: "\(registry.address)/scratch@\(digest)"))?.reference.description == "\(registry.address)/scratch@\(digest)")
        let wrong = "sha256:" + String(repeating: "1", count: 64)
        let error = await pullError("\(registry.address)/scratch@\(wrong)", into: try temporaryStore())
        #expect(error.hasPrefix("\(registry.address)/scratch@\(wrong): not found (404)"))
    }

    @Test func basicAuth() async throws {
        let registry = try Registries.basic.get()
        let good = RegistryCredentials([registry.address: RegistryCredential(username: "alice", password: "secret")])
        let store = try temporaryStore()
        let image = try await pull("\(registry.address)/scratch", into: store, credentials: good)
        #expect(image.manifestDigest == (try layoutDigest("scratch")))

        let bad = RegistryCredentials([registry.address: RegistryCredential(username: "alice", password: "wrong")])
        let other = try temporaryStore()
        #expect(await pullError("\(registry.address)/scratch", into: other, credentials: bad)
            == "\(registry.address): not authorized to pull scratch: the registry refused the credentials for alice")
        #expect(await pullError("\(registry.address)/scratch", into: other)
            == "\(registry.address): not authorized to pull scratch: the registry wants a user name and password (--registry-auth)")
        #expect(try other.list().isEmpty)
        try expectClean(other)
    }

    @Test func tokenAuth() async throws {
        let registry = try Registries.token.get()
        let good = RegistryCredentials([registry.address: RegistryCredential(username: "alice", password: "secret")])
        let image = try await pull("\(registry.address)/team/scratch:v1", into: try temporaryStore(), credentials: good)
        #expect(image.manifestDigest == (try layoutDigest("scratch")))
        // Anonymous: the token service gives a pull token without credentials.
        _ = try await pull("\(registry.address)/team/scratch:v1", into: try temporaryStore())
        let log = TestFiles.read(registry.directory + "/token.log") ?? ""
        #expect(log.contains("token user=alice scope=repository:team/scratch:pull"))
        #expect(log.contains("token user=- scope=repository:team/scratch:pull"))

        let bad = RegistryCredentials([registry.address: RegistryCredential(username: "alice", password: "wrong")])
        let store = try temporaryStore()
        #expect(await pullError("\(registry.address)/team/scratch:v1", into: store, credentials: bad)
            == "\(registry.address): not authorized to pull team/scratch: the token service refused the credentials for alice")
        try expectClean(store)
        #expect(try store.list().isEmpty)
    }

    @Test func secondPullFetchesNothing() async throws {
        let registry = try TestRegistry()
        defer { registry.stop() }
        try registry.push(TestImages.layout(), tag: "layered", as: "layered:latest")
        let store = try temporaryStore()
        let first = EventLog(), second = EventLog()
        let image = try await pull("\(registry.address)/layered", into: store, events: first)
        #expect(first.started == 3 && first.cached == 0) // config and two layers
        #expect(registry.blobGets() == 3)
        var before = stat()
        stat(image.layers[0].path, &before)
        let again = try await pull("\(registry.address)/layered", into: store, events: second)
        #expect(again.manifestDigest == image.manifestDigest)
        #expect(second.started == 0 && second.cached == 3)
        #expect(registry.blobGets() == 3)
        var after = stat()
        stat(image.layers[0].path, &after)
        #expect(after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec)
    }

    @Test func concurrentPullsOfOneImage() async throws {
        let registry = try Registries.plain.get()
        let store = try temporaryStore()
        let reference = "\(registry.address)/layered:latest"
        async let a = pull(reference, into: store)
        async let b = pull(reference, into: try ContentStore(root: store.root))
        let (x, y) = try await (a, b)
        #expect(x.manifestDigest == y.manifestDigest)
        try expectClean(store)
        #expect(try store.list().count == 1)
    }

    @Test func notFound() async throws {
        let registry = try Registries.plain.get()
        let store = try temporaryStore()
        let missing = await pullError("\(registry.address)/nothing-here:v9", into: store)
        #expect(missing == "\(registry.address)/nothing-here:v9: not found (404): MANIFEST_UNKNOWN: manifest unknown")
        #expect(await pullError("127.0.0.1:1/app", into: store) == "127.0.0.1:1: connection refused")
        try expectClean(store)
    }

    @Test func tamperedBlobIsRefused() async throws {
        let registry = try TestRegistry()
        defer { registry.stop() }
        try registry.push(TestImages.layout(), tag: "layered", as: "layered:latest")
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: Data(ContentStore.readFile(
            TestImages.layout() + "/blobs/sha256/" + String(try layoutDigest("layered").dropFirst(7)), limit: 1 << 20)))
        let layer = manifest.layers[1]
        // Same size, other bytes: only the digest can tell.
        let file = registry.blobFile(layer.digest)
        var bytes = try ContentStore.readFile(file, limit: 64 << 20)
        bytes[bytes.count / 2] ^= 0xFF
        let fd = open(file, O_WRONLY | O_TRUNC)
        #expect(fd >= 0)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)

        let store = try temporaryStore()
        let error = await pullError("\(registry.address)/layered", into: store)
        #expect(error.hasPrefix("blob \(layer.digest): content does not match its digest (expected \(layer.digest), got sha256:"))
        #expect(!store.has(layer.digest))
        #expect(try store.list().isEmpty)
        try expectClean(store)
    }

    @Test func fullDisk() async throws {
        let registry = try Registries.plain.get()
        let dir = try TestImages.temporaryDirectory("kiln-full")
        #expect(mount("tmpfs", dir, "tmpfs", 0, "size=256k") == 0, "mounting a small tmpfs needs root: \(String(cString: strerror(errno)))")
        defer { umount2(dir, Int32(MNT_DETACH)) }
        let store = try ContentStore(root: dir + "/oci")
        let error = await pullError("\(registry.address)/layered", into: store)
        #expect(error == "\(dir)/oci/blobs/sha256: No space left on device (write)")
        #expect(try store.list().isEmpty)
        try expectClean(store)
    }

    @Test func misbehavingRegistries() async throws {
        let fake = try KilnProcess([TestImages.script("fake-registry.py")], executable: "python3")
        defer { kill(fake.pid, SIGKILL); _ = try? fake.wait(seconds: 10) }
        try fake.waitFor("the port", seconds: 20) { $0.output.contains("\n") }
        let address = "127.0.0.1:" + fake.output.split(separator: "\n")[0]
        let store = try temporaryStore()
        let error = await pullError("\(address)/broken", into: store)
        #expect(error.hasPrefix("\(address): blob sha256:"), "\(error)")
        #expect(error.contains(": the registry closed the connection after ") && error.hasSuffix(" of 1048576 bytes"), "\(error)")
        #expect(try store.list().isEmpty)
        try expectClean(store)
        #expect(await pullError("\(address)/ratelimited", into: store) == "\(address): too many requests (429); try again later")
        #expect(await pullError("\(address)/failing", into: store) == "\(address): registry error 503: UNAVAILABLE: down for maintenance")
    }
}

@Suite(.blocking) struct ImportTests {
    @Test func importsAnOCILayout() throws {
        let store = try temporaryStore()
        let layout = try TestImages.layout()
        let image = try ImageImport.importLayout(directory: layout, name: try ImageReference(parsing: "kiln-test/app:config"), into: store)
        #expect(image.reference.description == "docker.io/kiln-test/app:config")
        #expect(image.manifestDigest == (try layoutDigest("config")))
        #expect(image.configuration.config?.User == "1000:1000")
        #expect(image.layers.allSatisfy { store.has($0.descriptor.digest, size: $0.descriptor.size) })

        let multi = try ImageImport.importLayout(directory: layout, name: try ImageReference(parsing: "localhost/multi:multi"), into: store)
        #expect(multi.manifestDigest == (try layoutDigest("scratch")) && multi.indexDigest != nil)
        try expectClean(store)
    }

    @Test func importsArchives() throws {
        let store = try temporaryStore()
        let out = String(try TestImages.layout().dropLast("/oci".count))
        // docker save form (skopeo's docker-archive): Kiln writes the manifest; layers are plain tars.
        let saved = try ImageImport.importArchive(path: out + "/config-docker.tar", name: nil, into: store)
        #expect(saved.reference.description == "docker.io/kiln-test/saved:v1")
        #expect(saved.configuration.config?.Entrypoint == ["/bin/busybox", "echo"])
        #expect(saved.layers.count == 1 && saved.layers[0].compression == LayerCompression.none)
        #expect(saved.platform == Platform(architecture: "amd64", os: "linux"))

        // An OCI layout tar (skopeo's oci-archive): the layout's own manifest digest.
        let layered = try ImageImport.importArchive(path: out + "/layered-oci.tar", name: try ImageReference(parsing: "kiln-test/layered:layered"), into: store)
        #expect(layered.layers.count == 2)
        // The whole layout, gzipped: choose by tag as for a directory.
        let multi = try ImageImport.importArchive(path: out + "/layout.tar.gz", name: try ImageReference(parsing: "kiln-test/multi:multi"), into: store)
        #expect(multi.manifestDigest == (try layoutDigest("scratch")))
        try expectClean(store)

        do { _ = try ImageImport.importArchive(path: out + "/layout.tar.gz", name: nil, into: store) } catch {
            #expect("\(error)".hasPrefix("\(out)/layout.tar.gz holds 5 images ("))
        }
        let garbage = out + "/not-a-tar"
        let fd = open(garbage, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = "this is not a tar archive, not at all; it goes on for a while to fill a block".withCString { write(fd, $0, strlen($0)) }
        close(fd)
        #expect(throws: ImportError.self) { try ImageImport.importArchive(path: garbage, name: nil, into: store) }
    }

    @Test func importErrors() throws {
        let store = try temporaryStore()
        let layout = try TestImages.layout()
        #expect(throws: ImportError.self) { try ImageImport.importLayout(directory: layout, name: nil, into: store) }
        do { _ = try ImageImport.importLayout(directory: layout, name: try ImageReference(parsing: "x:nope"), into: store) } catch {
            #expect("\(error)" == "\(layout) has no image tagged 'nope' (it has: scratch, layered, config, scratch-arm64, multi)")
        }
        do { _ = try ImageImport.importLayout(directory: "/tmp", name: nil, into: store) } catch {
            #expect("\(error)".hasPrefix("/tmp is not an OCI image layout"))
        }
        #expect(try store.list().isEmpty)
    }
}
