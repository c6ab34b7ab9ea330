import ArgumentParser
import FoundationEssentials
import Glibc
import Images
import LinuxSys
import Sandbox
import Synchronization

/// `kiln image ...`: OCI images (docs/images.md) in the store under /var/cache/kiln/oci.
struct ImageStoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "OCI images in Kiln's store.",
        discussion: """
            The store is /var/cache/kiln/oci (KILN_CACHE_DIR overrides). REF is [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]; \
            no host means docker.io, no tag :latest.
            """,
        subcommands: [Pull.self, Import.self, List.self, Inspect.self, Remove.self, Disk.self, Prune.self])

    func run() throws { missingSubcommand("image", "pull, import, ls, inspect, rm or prune") }

    static func store() -> ContentStore {
        do { return try ContentStore(root: Templates.cacheDirectory + "/oci") } catch { fail("image store: \(error)") }
    }

    struct Pull: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pull an image from a registry.",
            discussion: "Takes the linux/amd64 image of an index; blobs the store holds are not fetched again.")

        @Argument(help: ArgumentHelp("The image.", valueName: "REF")) var reference: String
        @OptionGroup var registry: RegistryOptions

        func run() async throws { Glibc.exit(await imagePull(parseReference(reference), registry, store: ImageStoreCommand.store())) }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import an OCI image layout (a directory or a tar) or a `docker save` tar, plain, gzip or zstd.")

        @Argument(help: ArgumentHelp("The layout or archive.", valueName: "PATH")) var path: String
        @Option(parsing: .unconditional, help: ArgumentHelp("Pick the image of this tag and name it so.", valueName: "REF"))
        var name: String?

        func run() {
            let name = name.map { parseReference($0) }
            let store = ImageStoreCommand.store()
            do {
                var st = stat()
                guard stat(path, &st) == 0 else { fail("import \(path): \(String(cString: strerror(errno)))") }
                let image = (st.st_mode & S_IFMT) == S_IFDIR
                    ? try ImageImport.importLayout(directory: path, name: name, into: store)
                    : try ImageImport.importArchive(path: path, name: name, into: store)
                writeRaw(1, "\(image.reference) \(image.manifestDigest)\n")
            } catch { fail("import \(path): \(error)") }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the images.", aliases: ["list"])

        func run() {
            let store = ImageStoreCommand.store()
            let records: [ContentStore.Record]
            do { records = try store.list() } catch { fail("image store: \(error)") }
            var rows = [["REFERENCE", "DIGEST", "PLATFORM", "SIZE"]]
            for record in records {
                let image = (try? ImageReference(parsing: record.reference)).flatMap { try? store.image(for: $0) }
                let size = image.map { formatBytes($0.layers.reduce(0) { $0 + $1.descriptor.size }) } ?? "(incomplete)"
                rows.append([record.reference, String(record.manifest.prefix(19)), record.platform.map(platformText) ?? "-", size])
            }
            writeRaw(1, table(rows))
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an image's manifest, layers and run configuration as JSON.")

        @Argument(help: ArgumentHelp("The image.", valueName: "REF")) var reference: String

        func run() {
            let reference = parseReference(self.reference)
            let image: StoredImage?
            do { image = try ImageStoreCommand.store().image(for: reference) } catch { fail("inspect \(reference): \(error)") }
            guard let image else { fail("no image \(reference) in the store (kiln image pull \(self.reference))") }
            writeRaw(1, inspectJSON(image) + "\n")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Forget a reference (prune removes its blobs).")

        @Argument(help: ArgumentHelp("The image.", valueName: "REF")) var reference: String

        func run() {
            let reference = parseReference(self.reference)
            let removed: Bool
            do { removed = try ImageStoreCommand.store().remove(reference) } catch { fail("rm \(reference): \(error)") }
            guard removed else { fail("no image \(reference) in the store") }
            writeRaw(1, "\(reference)\n")
        }
    }

    /// Hidden: builds only the root disk of a pulled image, so that Benchmarks/images.sh can
    /// time the conversion apart from the pull and the boot.
    struct Disk: AsyncParsableCommand {
        static let configuration = CommandConfiguration(shouldDisplay: false)

        @Argument var reference: String

        func run() async throws {
            let reference = parseReference(self.reference)
            do {
                let image = try await BootableImages.prepare(reference, store: ImageStoreCommand.store(), diskCache: Templates.cacheDirectory + "/oci/disks",
                                                             pull: nil)
                writeRaw(1, image.diskPath + "\n")
            } catch { fail("\(error)") }
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove the blobs no reference reaches.")

        func run() {
            do {
                let result = try ImageStoreCommand.store().prune()
                writeRaw(1, "removed \(result.blobsRemoved) blobs, \(formatBytes(result.bytesRemoved))\n")
            } catch { fail("prune: \(error)") }
        }
    }
}

func imagePull(_ reference: ImageReference, _ registry: RegistryOptions, store: ContentStore) async -> Int32 {
    let environment = { (name: String) -> String? in getenv(name).map { String(cString: $0) } }
    var options = PullOptions(insecureRegistries: Set(registry.insecureRegistry))
    if let path = RegistryCredentials.configPath(explicit: registry.registryAuth, dockerConfig: environment("DOCKER_CONFIG"),
                                                 home: environment("HOME")) {
        do { options.credentials = try RegistryCredentials.load(path: path, required: registry.registryAuth != nil) }
        catch { fail("\(error)") }
    }
    let display = isatty(2) == 1 ? PullDisplay() : nil
    var progress: (@Sendable (PullEvent) -> Void)?
    if let display { progress = { display.handle($0) } }
    let image: StoredImage
    do {
        image = try await Registry.pull(reference, into: store, options: options, progress: progress)
    } catch {
        display?.finish()
        fail("pull \(reference): \(error)")
    }
    display?.finish()
    writeRaw(1, "\(image.reference) \(image.manifestDigest)\n")
    return 0
}

func parseReference(_ text: String) -> ImageReference {
    do { return try ImageReference(parsing: text) } catch { fail(error.description, code: 2) }
}

func platformText(_ p: Platform) -> String { p.os + "/" + p.architecture + (p.variant.map { "/" + $0 } ?? "") }

func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(n), unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    if unit == 0 { return "\(n) B" }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}

func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 2) }.joined()
    }.joined(separator: "\n") + "\n"
}

/// `kiln image inspect`: what the image is and what a container of it runs.
func inspectJSON(_ image: StoredImage) -> String {
    struct Layer: Encodable { var digest: String; var mediaType: String; var size: Int64 }
    struct Config: Encodable {
        var Env: [String]?; var Entrypoint: [String]?; var Cmd: [String]?; var WorkingDir: String?; var User: String?
        enum CodingKeys: CodingKey { case Env, Entrypoint, Cmd, WorkingDir, User }
        // Every key is present, null when the image does not set it.
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(Env, forKey: .Env); try c.encode(Entrypoint, forKey: .Entrypoint); try c.encode(Cmd, forKey: .Cmd)
            try c.encode(WorkingDir, forKey: .WorkingDir); try c.encode(User, forKey: .User)
        }
    }
    struct Inspect: Encodable {
        var reference: String; var digest: String; var index: String?; var platform: String?
        var configDigest: String; var size: Int64; var layers: [Layer]; var config: Config
    }
    let run = image.configuration.config
    let inspect = Inspect(reference: image.reference.description, digest: image.manifestDigest, index: image.indexDigest,
                          platform: image.platform.map(platformText), configDigest: image.manifest.config.digest,
                          size: image.layers.reduce(0) { $0 + $1.descriptor.size },
                          layers: image.layers.map { Layer(digest: $0.descriptor.digest, mediaType: $0.descriptor.mediaType, size: $0.descriptor.size) },
                          config: Config(Env: run?.Env, Entrypoint: run?.Entrypoint, Cmd: run?.Cmd, WorkingDir: run?.WorkingDir, User: run?.User))
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return (try? encoder.encode(inspect)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
}

/// The pull's progress on a terminal: one line, rewritten at most ten times a second.
final class PullDisplay: Sendable {
    private struct State {
        var blobs: [String: (index: Int, size: Int64, received: Int64)] = [:]
        var total: Int64 = 0
        var startedAt: Double = 0
        var fetchedBytes: Int64 = 0
        var lastDraw: Double = 0
        var drew = false
    }
    private let state = Mutex(State())

    func handle(_ event: PullEvent) {
        state.withLock { s in
            switch event {
            case .resolved(_, let blobs):
                for (i, b) in blobs.enumerated() { s.blobs[b.digest] = (i, b.size, 0) }
                s.total = blobs.reduce(0) { $0 + $1.size }
                s.startedAt = Self.now()
            case .cached(let d):
                s.blobs[d.digest]?.received = d.size
                draw(&s, current: d, force: true, note: "already stored")
            case .started(let d): draw(&s, current: d, force: true, note: "")
            case .received(let d, let bytes):
                let before = s.blobs[d.digest]?.received ?? 0
                s.blobs[d.digest]?.received = bytes
                s.fetchedBytes += bytes - before
                draw(&s, current: d, force: false, note: "")
            case .finished(let d): draw(&s, current: d, force: true, note: "")
            }
        }
    }

    func finish() { state.withLock { s in if s.drew { writeRaw(2, "\n"); s.drew = false } } }

    private func draw(_ s: inout State, current: Descriptor, force: Bool, note: String) {
        let now = Self.now()
        guard force || now - s.lastDraw >= 0.1 else { return }
        s.lastDraw = now
        s.drew = true
        let done = s.blobs.values.reduce(Int64(0)) { $0 + $1.received }
        let blob = s.blobs[current.digest]
        let elapsed = max(now - s.startedAt, 0.001)
        let rate = formatBytes(Int64(Double(s.fetchedBytes) / elapsed)) + "/s"
        let which = (blob?.index ?? 0) == 0 ? "config" : "layer \(blob?.index ?? 0)/\(max(s.blobs.count - 1, 0))"
        var line = "\(which) \(current.digest.dropFirst(7).prefix(12)) \(formatBytes(blob?.received ?? 0))/\(formatBytes(current.size))"
        line += note.isEmpty ? "" : " (\(note))"
        line += "  total \(formatBytes(done))/\(formatBytes(s.total))  \(rate)"
        writeRaw(2, "\r\u{1B}[K" + line)
    }

    private static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
