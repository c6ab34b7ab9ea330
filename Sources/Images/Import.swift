import FoundationEssentials
import Glibc
import LinuxSys

/// Imports images from local files into the store (docs/images.md, "Import"): an OCI image
/// layout directory (`oci-layout`, `index.json`, `blobs/`). Every blob is verified against its
/// digest as it is copied, as a pull does.
public enum ImageImport {
    public static let refNameAnnotation = "org.opencontainers.image.ref.name"

    /// Imports one image of the OCI layout at `directory`. `name` picks the image by its tag
    /// (the layout's `org.opencontainers.image.ref.name`) and is the reference it is stored
    /// under; without it the layout must hold one image, stored under its own ref name (or
    /// `<directory name>:latest`).
    public static func importLayout(directory: String, name: ImageReference?, into store: ContentStore,
                                    platform: Platform = Platform(architecture: "amd64", os: "linux")) throws(ImportError) -> StoredImage {
        let source = DirectorySource(root: directory)
        struct Layout: Decodable { var imageLayoutVersion: String }
        guard (try? JSONDecoder().decode(Layout.self, from: Data(source.file("oci-layout", limit: 4096)))) != nil else {
            throw .notLayout(path: directory, reason: "no oci-layout file with an imageLayoutVersion")
        }
        let index: ImageIndex
        do { index = try JSONDecoder().decode(ImageIndex.self, from: Data(try source.file("index.json", limit: 16 << 20))) }
        catch let error as ImportError { throw error }
        catch { throw .notLayout(path: directory, reason: "index.json does not decode (\(error))") }

        let basename = directory.split(separator: "/").last.map(String.init) ?? "image"
        let (entry, reference) = try choose(in: index, name: name, defaultRepository: basename, path: directory)
        return try importImage(entry, from: source, as: reference, into: store, platform: platform)
    }

    /// Picks the index entry `name` asks for, and the reference to store it under.
    static func choose(in index: ImageIndex, name: ImageReference?, defaultRepository: String, path: String) throws(ImportError) -> (Descriptor, ImageReference) {
        let tags = index.manifests.compactMap { $0.annotations?[refNameAnnotation] }
        if let name {
            let wanted = [name.tag, name.description].compactMap { $0 }
            if let match = index.manifests.first(where: { d in d.annotations?[refNameAnnotation].map { wanted.contains($0) } ?? false }) {
                return (match, name)
            }
            // Docker's OCI archives name each image in full.
            if let match = index.manifests.first(where: { d in
                d.annotations?[containerdNameAnnotation].flatMap { try? ImageReference(parsing: $0) } == name
            }) { return (match, name) }
            if index.manifests.count == 1 { return (index.manifests[0], name) }
            throw .noSuchImage(path: path, tag: name.tag ?? name.description, available: tags)
        }
        guard index.manifests.count == 1 else {
            throw .ambiguous(path: path, count: index.manifests.count, available: tags)
        }
        let entry = index.manifests[0]
        if let full = entry.annotations?[containerdNameAnnotation], let reference = try? ImageReference(parsing: full) { return (entry, reference) }
        let refName = entry.annotations?[refNameAnnotation]
        // A full name ("registry/repo:tag") is used as it is; a bare tag goes under the directory's name.
        if let refName, refName.contains("/"), let reference = try? ImageReference(parsing: refName) { return (entry, reference) }
        let repository = defaultRepository.lowercased().filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }
        let text = (repository.isEmpty ? "image" : repository) + ":" + (refName.flatMap { ImageReference.isTag($0) ? $0 : nil } ?? "latest")
        do { return (entry, try ImageReference(parsing: text)) } catch { throw .badName(error) }
    }

    /// Copies an index entry (a manifest, or an index to choose `platform` from) with its config
    /// and layers into the store and tags it.
    static func importImage(_ entry: Descriptor, from source: some BlobSource, as reference: ImageReference,
                            into store: ContentStore, platform wanted: Platform) throws(ImportError) -> StoredImage {
        let lease: StoreLease
        do { lease = try store.sharedLease() } catch { throw .store(error) }
        defer { lease.release() }

        var descriptor = entry
        var indexDigest: String?
        var platform = entry.platform
        // Nested indexes: choose the platform's manifest, as a pull does.
        var depth = 0
        while MediaType.isIndex(descriptor.mediaType) {
            depth += 1
            guard depth <= 4 else { throw .badDocument(what: descriptor.digest, reason: "indexes nested more than 4 deep") }
            let bytes = try source.document(descriptor)
            let nested: ImageIndex
            do { nested = try JSONDecoder().decode(ImageIndex.self, from: Data(bytes)) }
            catch { throw .badDocument(what: "index \(descriptor.digest)", reason: "\(error)") }
            do { try store.put(bytes, digest: descriptor.digest) } catch { throw .store(error) }
            if indexDigest == nil { indexDigest = descriptor.digest }
            guard let chosen = nested.manifests.first(where: { d in
                d.platform.map { $0.os == wanted.os && $0.architecture == wanted.architecture } ?? false
            }) else {
                throw .noPlatform(wanted: wanted.os + "/" + wanted.architecture,
                                  available: nested.manifests.compactMap { $0.platform.map { $0.os + "/" + $0.architecture } })
            }
            descriptor = chosen
            platform = chosen.platform
        }
        guard MediaType.isManifest(descriptor.mediaType) else {
            throw .badDocument(what: descriptor.digest, reason: "unsupported media type '\(descriptor.mediaType)'")
        }
        let manifestBytes = try source.document(descriptor)
        let manifest: ImageManifest
        do { manifest = try JSONDecoder().decode(ImageManifest.self, from: Data(manifestBytes)) }
        catch { throw .badDocument(what: "manifest \(descriptor.digest)", reason: "\(error)") }
        for blob in [manifest.config] + manifest.layers {
            guard Digest.isValid(blob.digest), blob.size >= 0 else { throw .badDocument(what: "manifest \(descriptor.digest)", reason: "'\(blob.digest)' is not a sha256 digest") }
            try source.copy(blob, into: store)
        }
        do {
            try store.put(manifestBytes, digest: descriptor.digest)
            let config = try JSONDecoder().decode(ImageConfiguration.self, from: Data(try store.read(manifest.config.digest)))
            if platform == nil, let os = config.os, let arch = config.architecture { platform = Platform(architecture: arch, os: os) }
            try store.tag(reference, manifest: descriptor.digest, index: indexDigest, platform: platform)
            guard let image = try store.image(for: reference) else { throw StoreError.missingBlob(descriptor.digest) }
            return image
        } catch let error as StoreError { throw .store(error) }
        catch { throw .badDocument(what: "image configuration \(manifest.config.digest)", reason: "\(error)") }
    }
}

/// Where an import reads blobs from: a layout directory, or (later) a tar.
protocol BlobSource {
    /// A small document (index, manifest), verified against the descriptor.
    func document(_ descriptor: Descriptor) throws(ImportError) -> [UInt8]
    /// Streams a blob into the store, verified, unless the store holds it.
    func copy(_ descriptor: Descriptor, into store: ContentStore) throws(ImportError)
}

struct DirectorySource: BlobSource {
    let root: String

    func file(_ name: String, limit: Int) throws(ImportError) -> [UInt8] {
        do { return try ContentStore.readFile(root + "/" + name, limit: limit) }
        catch { throw .notLayout(path: root, reason: "\(name): \(error)") }
    }

    func blobPath(_ digest: String) -> String { root + "/blobs/sha256/" + Digest.hex(digest) }

    func document(_ descriptor: Descriptor) throws(ImportError) -> [UInt8] {
        guard Digest.isValid(descriptor.digest) else { throw .badDocument(what: descriptor.digest, reason: "not a sha256 digest") }
        let bytes: [UInt8]
        do { bytes = try ContentStore.readFile(blobPath(descriptor.digest), limit: 4 << 20) }
        catch { throw .missingBlob(path: root, digest: descriptor.digest, reason: error.description) }
        let actual = ContentStore.digest(of: bytes)
        guard actual == descriptor.digest else { throw .store(.digestMismatch(expected: descriptor.digest, actual: actual)) }
        guard Int64(bytes.count) == descriptor.size else {
            throw .store(.sizeMismatch(digest: descriptor.digest, expected: descriptor.size, actual: Int64(bytes.count)))
        }
        return bytes
    }

    func copy(_ descriptor: Descriptor, into store: ContentStore) throws(ImportError) {
        if store.has(descriptor.digest, size: descriptor.size) { return }
        let path = blobPath(descriptor.digest)
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDONLY) }
        catch { throw .missingBlob(path: root, digest: descriptor.digest, reason: error.description) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        do throws(StoreError) {
            let writer = try store.ingest(digest: descriptor.digest, size: descriptor.size)
            while true {
                let n: Int
                do { n = try fd.read(into: buffer) } catch { throw StoreError.io(path: path, error) }
                if n == 0 { break }
                try writer.write(UnsafeRawBufferPointer(rebasing: buffer[..<n]))
            }
            try writer.commit()
        } catch { throw .store(error) }
    }
}

public enum ImportError: Error, Sendable, CustomStringConvertible {
    case notLayout(path: String, reason: String)
    case missingBlob(path: String, digest: String, reason: String)
    case badDocument(what: String, reason: String)
    case ambiguous(path: String, count: Int, available: [String])
    case noSuchImage(path: String, tag: String, available: [String])
    case noPlatform(wanted: String, available: [String])
    case badName(ReferenceError)
    case store(StoreError)

    public var description: String {
        switch self {
        case .notLayout(let path, let reason): return "\(path) is not an OCI image layout: \(reason)"
        case .missingBlob(let path, let digest, let reason): return "\(path): blob \(digest) missing (\(reason))"
        case .badDocument(let what, let reason): return "\(what) is not valid: \(reason)"
        case .ambiguous(let path, let count, let available):
            return "\(path) holds \(count) images (\(available.joined(separator: ", "))): choose one with --name NAME:TAG"
        case .noSuchImage(let path, let tag, let available):
            return "\(path) has no image tagged '\(tag)' (it has: \(available.isEmpty ? "no tags" : available.joined(separator: ", ")))"
        case .noPlatform(let wanted, let available):
            return "no \(wanted) image in the index (it has: \(available.isEmpty ? "none" : available.joined(separator: ", ")))"
        case .badName(let error): return error.description
        case .store(let error): return error.description
        }
    }
}
