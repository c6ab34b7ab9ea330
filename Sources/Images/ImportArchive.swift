import FoundationEssentials
import Glibc
import LinuxSys

/// Tar forms of an image (docs/images.md, "Import"): an OCI image layout in a tar, and what
/// `docker save` writes (manifest.json listing each image's Config and Layers; newer Docker
/// writes both forms in one tar). Plain, gzip- or zstd-compressed.
///
/// One pass over the archive: every regular file goes into the store as it streams by
/// (`blobs/sha256/<hex>` must hash to its name; other files are named by their hash), the
/// small documents are kept; then the image is assembled from the store. Files no reference
/// reaches in the end are left for `prune`.
extension ImageImport {
    public static let containerdNameAnnotation = "io.containerd.image.name"

    /// Imports one image of the archive at `path`. `name` picks it (by tag, or a docker save
    /// RepoTag) and names it; without it the archive must hold one image.
    public static func importArchive(path: String, name: ImageReference?, into store: ContentStore,
                                     platform: Platform = Platform(architecture: "amd64", os: "linux")) throws(ImportError) -> StoredImage {
        let lease: StoreLease
        do { lease = try store.sharedLease() } catch { throw .store(error) }
        defer { lease.release() }
        let contents = try ArchiveContents.read(path: path, into: store)

        if let indexBytes = contents.documents["index.json"], contents.documents["oci-layout"] != nil {
            let index: ImageIndex
            do { index = try JSONDecoder().decode(ImageIndex.self, from: Data(indexBytes)) }
            catch { throw .notLayout(path: path, reason: "index.json does not decode (\(error))") }
            let (entry, reference) = try choose(in: index, name: name, defaultRepository: baseName(path), path: path)
            return try importImage(entry, from: StoreSource(store: store, archive: path), as: reference, into: store, platform: platform)
        }
        guard let manifestBytes = contents.documents["manifest.json"] else {
            throw .notLayout(path: path, reason: "neither an OCI layout (oci-layout, index.json) nor a docker save archive (manifest.json)")
        }
        return try importDockerSave(manifestBytes, contents: contents, path: path, name: name, into: store)
    }

    static func baseName(_ path: String) -> String {
        var name = path.split(separator: "/").last.map(String.init) ?? "image"
        for suffix in [".gz", ".tgz", ".zst", ".tar"] where name.hasSuffix(suffix) { name = String(name.dropLast(suffix.count)) }
        return name
    }

    /// docker save's `manifest.json`: `[{"Config": FILE, "RepoTags": [...], "Layers": [FILE...]}]`.
    static func importDockerSave(_ manifestBytes: [UInt8], contents: ArchiveContents, path: String, name: ImageReference?,
                                 into store: ContentStore) throws(ImportError) -> StoredImage {
        struct Entry: Decodable { var Config: String; var RepoTags: [String]?; var Layers: [String] }
        let entries: [Entry]
        do { entries = try JSONDecoder().decode([Entry].self, from: Data(manifestBytes)) }
        catch { throw .notLayout(path: path, reason: "manifest.json does not decode (\(error))") }
        let tags = entries.flatMap { $0.RepoTags ?? [] }
        let chosen: Entry
        let reference: ImageReference
        if let name {
            let matching = entries.first { ($0.RepoTags ?? []).contains { (try? ImageReference(parsing: $0)) == name || $0 == name.tag } }
            guard let entry = matching ?? (entries.count == 1 ? entries[0] : nil) else {
                throw .noSuchImage(path: path, tag: name.description, available: tags)
            }
            chosen = entry; reference = name
        } else {
            guard entries.count == 1 else { throw .ambiguous(path: path, count: entries.count, available: tags) }
            chosen = entries[0]
            guard let tag = chosen.RepoTags?.first else {
                throw .notLayout(path: path, reason: "its image has no RepoTags: name it with --name REF")
            }
            do { reference = try ImageReference(parsing: tag) } catch { throw .badName(error) }
        }
        func blob(_ file: String, mediaType: (String) -> String) throws(ImportError) -> Descriptor {
            guard let stored = contents.file(file) else { throw .missingBlob(path: path, digest: file, reason: "not in the archive") }
            return Descriptor(mediaType: mediaType(stored.digest), digest: stored.digest, size: stored.size)
        }
        let config = try blob(chosen.Config) { _ in MediaType.ociConfig }
        var layers: [Descriptor] = []
        for file in chosen.Layers {
            layers.append(try blob(file) { digest in Self.layerMediaType(sniffing: store.blobPath(digest)) })
        }
        // The archive has no manifest of its own: Kiln writes one (so its digest is Kiln's).
        let manifest = ImageManifest(mediaType: MediaType.ociManifest, config: config, layers: layers)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            let bytes = Array(try encoder.encode(manifest))
            let digest = try store.put(bytes)
            let configuration = try JSONDecoder().decode(ImageConfiguration.self, from: Data(try store.read(config.digest)))
            let platform = configuration.os.flatMap { os in configuration.architecture.map { Platform(architecture: $0, os: os) } }
            try store.tag(reference, manifest: digest, platform: platform)
            guard let image = try store.image(for: reference) else { throw StoreError.missingBlob(digest) }
            return image
        } catch let error as StoreError { throw .store(error) }
        catch { throw .badDocument(what: "image configuration \(config.digest)", reason: "\(error)") }
    }

    /// docker save's layer files may be plain or compressed tars: the first bytes tell.
    static func layerMediaType(sniffing path: String) -> String {
        var magic = [UInt8](repeating: 0, count: 4)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return MediaType.ociLayer }
        defer { close(fd) }
        let n = magic.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4, 0) }
        if n >= 2 && magic[0] == 0x1F && magic[1] == 0x8B { return MediaType.ociLayerGzip }
        if n == 4 && magic == [0x28, 0xB5, 0x2F, 0xFD] { return MediaType.ociLayerZstd }
        return MediaType.ociLayer
    }
}

/// What one pass over an image archive left: its small documents, and where each file went.
struct ArchiveContents {
    static let documentNames: Set<String> = ["oci-layout", "index.json", "manifest.json", "repositories"]
    var documents: [String: [UInt8]] = [:]
    /// Archive path -> the stored blob.
    var files: [String: (digest: String, size: Int64)] = [:]
    /// Archive path -> target path, for docker save's shared layers (symlinks between them).
    var links: [String: String] = [:]

    func file(_ path: String) -> (digest: String, size: Int64)? {
        var p = Self.normalise(path)
        for _ in 0..<8 {
            if let f = files[p] { return f }
            guard let target = links[p] else { return nil }
            p = target
        }
        return nil
    }

    static func normalise(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." || part.isEmpty { continue }
            if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(part)
        }
        return parts.joined(separator: "/")
    }

    static func read(path: String, into store: ContentStore) throws(ImportError) -> ArchiveContents {
        let fail = { (error: TarError) -> ImportError in .notLayout(path: path, reason: error.description) }
        let reader: TarReader
        do {
            let compression: LayerCompression = switch ImageImport.layerMediaType(sniffing: path) {
            case MediaType.ociLayerGzip: .gzip
            case MediaType.ociLayerZstd: .zstd
            default: .none
            }
            reader = TarReader(try compression.decompressing(try FileByteSource(path: path)))
        } catch { throw fail(error) }

        var contents = ArchiveContents()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let entry: TarEntry?
            do { entry = try reader.next() } catch { throw fail(error) }
            guard let entry else { break }
            let name = normalise(entry.path)
            switch entry.kind {
            case .symbolicLink:
                let target = entry.linkTarget.hasPrefix("/") ? entry.linkTarget
                    : (name.split(separator: "/").dropLast().joined(separator: "/") + "/" + entry.linkTarget)
                contents.links[name] = normalise(target)
            case .hardLink:
                contents.links[name] = normalise(entry.linkTarget)
            case .regular:
                if documentNames.contains(name) {
                    do { contents.documents[name] = try reader.readContents(limit: 16 << 20) } catch { throw fail(error) }
                    continue
                }
                // blobs/sha256/<hex> is verified against its name; anything else is named by its hash.
                let named = name.hasPrefix("blobs/sha256/") ? "sha256:" + name.dropFirst("blobs/sha256/".count) : nil
                if let named, !Digest.isValid(named) { continue }
                if let named, store.has(named, size: entry.size) {
                    contents.files[name] = (named, entry.size)
                    continue // the reader skips the rest of the entry
                }
                let writer: BlobWriter
                do throws(StoreError) {
                    if let named { writer = try store.ingest(digest: named, size: entry.size) } else { writer = try store.ingestNew(size: entry.size) }
                } catch { throw .store(error) }
                while true {
                    let n: Int
                    do { n = try reader.read(into: buffer) } catch { throw fail(error) }
                    if n == 0 { break }
                    do { try writer.write(UnsafeRawBufferPointer(rebasing: buffer[..<n])) } catch { throw .store(error) }
                }
                do { contents.files[name] = (try writer.commitNamed().digest, entry.size) }
                catch { throw .store(error) }
            default:
                continue
            }
        }
        return contents
    }
}

/// Blobs an archive pass already put in the store (verified then).
struct StoreSource: BlobSource {
    let store: ContentStore
    let archive: String

    func document(_ descriptor: Descriptor) throws(ImportError) -> [UInt8] {
        guard store.has(descriptor.digest, size: descriptor.size) else {
            throw .missingBlob(path: archive, digest: descriptor.digest, reason: "not in the archive")
        }
        do { return try store.read(descriptor.digest) } catch { throw .store(error) }
    }

    func copy(_ descriptor: Descriptor, into store: ContentStore) throws(ImportError) {
        guard store.has(descriptor.digest, size: descriptor.size) else {
            throw .missingBlob(path: archive, digest: descriptor.digest, reason: "not in the archive")
        }
    }
}
