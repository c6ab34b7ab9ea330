import FoundationEssentials
import Glibc
import Images
import LinuxSys
import Sandbox
import Synchronization

let imageUsage = """
    usage: kiln image pull REF [--registry-auth FILE] [--insecure-registry HOST[:PORT]]...
           kiln image import PATH [--name REF]
           kiln image ls
           kiln image inspect REF
           kiln image rm REF
           kiln image prune

    OCI images (docs/images.md) in the store under /var/cache/kiln/oci (KILN_CACHE_DIR overrides).
    REF is [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]; no host means docker.io, no tag :latest.
    pull takes the linux/amd64 image of an index; blobs the store holds are not fetched again.
      --registry-auth FILE   a Docker config.json with credentials (default: $DOCKER_CONFIG/config.json,
                             else ~/.docker/config.json)
      --insecure-registry H  plain HTTP for host H (repeatable); loopback hosts always use it
    import reads an OCI image layout (a directory or a tar) or a `docker save` tar, plain, gzip or zstd;
    --name picks its image by tag and names it.
    rm forgets a reference; prune removes the blobs no reference reaches.
    """

func imageCommand(_ args: ArraySlice<String>) async -> Int32 {
    guard let verb = args.first else { fail(imageUsage, code: 2) }
    let rest = args.dropFirst()
    if ["--help", "-h", "help"].contains(verb) { writeRaw(1, imageUsage + "\n"); return 0 }
    let store: ContentStore
    do { store = try ContentStore(root: Templates.cacheDirectory + "/oci") } catch { fail("image store: \(error)") }
    switch verb {
    case "pull": return await imagePull(rest, store: store)
    case "import":
        let (positionals, parsed) = imageArguments(rest, options: ["name"])
        guard positionals.count == 1 else { fail("kiln image import needs one PATH\n\(imageUsage)", code: 2) }
        let name = parsed.string("name").map { parseReference($0) }
        do {
            var st = stat()
            guard stat(positionals[0], &st) == 0 else { fail("import \(positionals[0]): \(String(cString: strerror(errno)))") }
            let image = (st.st_mode & S_IFMT) == S_IFDIR
                ? try ImageImport.importLayout(directory: positionals[0], name: name, into: store)
                : try ImageImport.importArchive(path: positionals[0], name: name, into: store)
            writeRaw(1, "\(image.reference) \(image.manifestDigest)\n")
        } catch { fail("import \(positionals[0]): \(error)") }
        return 0
    case "ls", "list":
        _ = imageArguments(rest, options: [], positionals: 0)
        let records: [ContentStore.Record]
        do { records = try store.list() } catch { fail("image store: \(error)") }
        var rows = [["REFERENCE", "DIGEST", "PLATFORM", "SIZE"]]
        for record in records {
            let image = (try? ImageReference(parsing: record.reference)).flatMap { try? store.image(for: $0) }
            let size = image.map { formatBytes($0.layers.reduce(0) { $0 + $1.descriptor.size }) } ?? "(incomplete)"
            rows.append([record.reference, String(record.manifest.prefix(19)), record.platform.map(platformText) ?? "-", size])
        }
        writeRaw(1, table(rows))
        return 0
    case "inspect":
        let (positionals, _) = imageArguments(rest, options: [], positionals: 1)
        let reference = parseReference(positionals[0])
        let image: StoredImage?
        do { image = try store.image(for: reference) } catch { fail("inspect \(reference): \(error)") }
        guard let image else { fail("no image \(reference) in the store (kiln image pull \(positionals[0]))") }
        writeRaw(1, inspectJSON(image) + "\n")
        return 0
    case "rm":
        let (positionals, _) = imageArguments(rest, options: [], positionals: 1)
        let reference = parseReference(positionals[0])
        let removed: Bool
        do { removed = try store.remove(reference) } catch { fail("rm \(reference): \(error)") }
        guard removed else { fail("no image \(reference) in the store") }
        writeRaw(1, "\(reference)\n")
        return 0
    case "disk":
        // Hidden (not in the usage): builds only the root disk of a pulled image, so that
        // Benchmarks/images.sh can time the conversion apart from the pull and the boot.
        let (positionals, _) = imageArguments(rest, options: [], positionals: 1)
        let reference = parseReference(positionals[0])
        do {
            let image = try await BootableImages.prepare(reference, store: store, diskCache: Templates.cacheDirectory + "/oci/disks", pull: nil)
            writeRaw(1, image.diskPath + "\n")
        } catch { fail("\(error)") }
        return 0
    case "prune":
        _ = imageArguments(rest, options: [], positionals: 0)
        do {
            let result = try store.prune()
            writeRaw(1, "removed \(result.blobsRemoved) blobs, \(formatBytes(result.bytesRemoved))\n")
        } catch { fail("prune: \(error)") }
        return 0
    default:
        fail("unknown image command '\(verb)'\n\(imageUsage)", code: 2)
    }
}

func imagePull(_ args: ArraySlice<String>, store: ContentStore) async -> Int32 {
    let (positionals, parsed) = imageArguments(args, options: ["registry-auth", "insecure-registry"], positionals: 1)
    let reference = parseReference(positionals[0])
    let environment = { (name: String) -> String? in getenv(name).map { String(cString: $0) } }
    var options = PullOptions(insecureRegistries: Set(parsed.all("insecure-registry")))
    if let path = RegistryCredentials.configPath(explicit: parsed.string("registry-auth"), dockerConfig: environment("DOCKER_CONFIG"),
                                                 home: environment("HOME")) {
        do { options.credentials = try RegistryCredentials.load(path: path, required: parsed.string("registry-auth") != nil) }
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

/// Splits positionals from `--options`, fails on the wrong count (when given) or a bad option.
func imageArguments(_ args: ArraySlice<String>, options: Set<String>, positionals count: Int? = nil) -> ([String], Arguments) {
    var positionals: [String] = []
    var optionArgs: [String] = []
    var i = args.startIndex
    while i < args.endIndex {
        let arg = args[i]
        if arg.hasPrefix("--") {
            optionArgs.append(arg)
            if options.contains(String(arg.dropFirst(2))), i + 1 < args.endIndex { i += 1; optionArgs.append(args[i]) }
        } else {
            positionals.append(arg)
        }
        i += 1
    }
    let parsed: Arguments
    do { parsed = try Arguments(optionArgs[...], options: options, flags: []) } catch { fail("\(error.message)\n\(imageUsage)", code: 2) }
    if let count, positionals.count != count {
        fail(count == 0 ? "unexpected argument '\(positionals[0])'" : "expected \(count == 1 ? "one REF" : "\(count) arguments")\n\(imageUsage)", code: 2)
    }
    return (positionals, parsed)
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
