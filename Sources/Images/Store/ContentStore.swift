import Crypto
import FoundationEssentials
import Glibc
import LinuxSys

/// Kiln's OCI content store (docs/images.md, "The store"):
///
///     ROOT/blobs/sha256/<hex>   verified content, named by its digest; shared blobs stored once
///     ROOT/ingest/              blobs being written (temp files; never read, swept when stale)
///     ROOT/refs.json            reference -> manifest digest (and platform), replaced atomically
///     ROOT/lock, ROOT/refs.lock flocks: pulls share `lock`, prune takes it alone; refs.json edits
///                               take `refs.lock`
///
/// A blob appears under blobs/ only by rename after its SHA-256 and size matched and it was
/// fsynced, so a crash leaves at most a temp file in ingest/, which nothing reads.
public final class ContentStore: Sendable {
    public let root: String

    /// Opens (creating) the store at `root`, e.g. `<Templates.cacheDirectory>/oci`.
    public init(root: String) throws(StoreError) {
        self.root = root
        // Parents too: a fresh host has no cache directory yet.
        var parents: [String] = []
        var prefix = root.hasPrefix("/") ? "" : "."
        for part in root.split(separator: "/").dropLast() { prefix += "/" + part; parents.append(prefix) }
        for dir in parents + [root, root + "/blobs", root + "/blobs/sha256", root + "/ingest"] {
            if mkdir(dir, 0o755) != 0 && errno != EEXIST { throw .io(path: dir, .current("mkdir")) }
        }
        sweepIngest()
    }

    public var blobDirectory: String { root + "/blobs/sha256" }
    var ingestDirectory: String { root + "/ingest" }
    var refsPath: String { root + "/refs.json" }

    public func blobPath(_ digest: String) -> String { blobDirectory + "/" + Digest.hex(digest) }

    /// Whether the store already holds this blob (written only after verification) at its size.
    public func has(_ digest: String, size: Int64? = nil) -> Bool {
        guard Digest.isValid(digest) else { return false }
        var st = stat()
        guard stat(blobPath(digest), &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return false }
        return size.map { Int64(st.st_size) == $0 } ?? true
    }

    /// Starts writing a blob that must hash to `digest` and, when given, be `size` bytes long.
    public func ingest(digest: String, size: Int64?) throws(StoreError) -> BlobWriter {
        guard Digest.isValid(digest) else { throw .badDigest(digest) }
        return try BlobWriter(store: self, digest: digest, size: size)
    }

    /// Starts writing a blob whose digest is not known yet: `commitNamed` names it by its SHA-256.
    public func ingestNew(size: Int64? = nil) throws(StoreError) -> BlobWriter {
        try BlobWriter(store: self, digest: nil, size: size)
    }

    /// Stores a small blob held in memory (a manifest, a config) and returns its digest. With
    /// `digest`, the bytes must hash to it.
    @discardableResult
    public func put(_ bytes: [UInt8], digest expected: String? = nil) throws(StoreError) -> String {
        let digest = expected ?? Self.digest(of: bytes)
        if has(digest, size: Int64(bytes.count)) {
            // Still check: a caller's expected digest must describe these bytes.
            let actual = Self.digest(of: bytes)
            guard actual == digest else { throw .digestMismatch(expected: digest, actual: actual) }
            return digest
        }
        let writer = try ingest(digest: digest, size: Int64(bytes.count))
        try writer.write(bytes)
        try writer.commit()
        return digest
    }

    /// A stored blob's bytes, refusing more than `limit` (documents are small; layers are read by path).
    public func read(_ digest: String, limit: Int = 4 << 20) throws(StoreError) -> [UInt8] {
        guard Digest.isValid(digest) else { throw .badDigest(digest) }
        let path = blobPath(digest)
        guard has(digest) else { throw .missingBlob(digest) }
        return try Self.readFile(path, limit: limit)
    }

    public static func digest(of bytes: [UInt8]) -> String {
        "sha256:" + hex(SHA256.hash(data: bytes))
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in digest { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: Locks

    /// Held by a pull or import for its whole run, so that prune never removes the blobs it has
    /// written but not yet referenced. Released when the lease is dropped.
    public func sharedLease() throws(StoreError) -> StoreLease { try StoreLease(path: root + "/lock", operation: LOCK_SH) }

    func exclusiveLease() throws(StoreError) -> StoreLease { try StoreLease(path: root + "/lock", operation: LOCK_EX) }

    // MARK: References

    /// The recorded form of a reference: what `refs.json` holds.
    public struct Record: Codable, Sendable, Equatable {
        public var reference: String
        /// The platform manifest the reference resolves to.
        public var manifest: String
        /// The index (manifest list) it was chosen from, when the reference named one.
        public var index: String?
        public var platform: Platform?
    }

    struct RefsFile: Codable { var images: [Record] }

    /// Points `reference` at a manifest already in the store, replacing what it named before.
    public func tag(_ reference: ImageReference, manifest: String, index: String? = nil, platform: Platform?) throws(StoreError) {
        guard has(manifest) else { throw .missingBlob(manifest) }
        if let index, !has(index) { throw .missingBlob(index) }
        let record = Record(reference: reference.description, manifest: manifest, index: index, platform: platform)
        try editRefs { images in
            images.removeAll { $0.reference == record.reference }
            images.append(record)
            images.sort { $0.reference < $1.reference }
        }
    }

    /// Every reference in the store, sorted.
    public func list() throws(StoreError) -> [Record] { try readRefs().images }

    /// Forgets `reference`; its blobs stay until `prune`. False when it was not there.
    @discardableResult
    public func remove(_ reference: ImageReference) throws(StoreError) -> Bool {
        var found = false
        try editRefs { images in
            let before = images.count
            images.removeAll { $0.reference == reference.description }
            found = images.count != before
        }
        return found
    }

    public struct PruneResult: Sendable, Equatable {
        public var blobsRemoved: Int
        public var bytesRemoved: Int64
    }

    /// Removes every blob that no reference reaches, and stale ingest files. Waits for running pulls.
    public func prune() throws(StoreError) -> PruneResult {
        let lease = try exclusiveLease()
        defer { lease.release() }
        var keep: Set<String> = []
        for record in try readRefs().images {
            keep.insert(Digest.hex(record.manifest))
            if let index = record.index { keep.insert(Digest.hex(index)) }
            if let manifest = try? decodeManifest(record.manifest) {
                keep.insert(Digest.hex(manifest.config.digest))
                for layer in manifest.layers where Digest.isValid(layer.digest) { keep.insert(Digest.hex(layer.digest)) }
            }
        }
        var result = PruneResult(blobsRemoved: 0, bytesRemoved: 0)
        for name in Self.names(in: blobDirectory) where !keep.contains(name) {
            let path = blobDirectory + "/" + name
            var st = stat()
            let size = stat(path, &st) == 0 ? Int64(st.st_size) : 0
            if unlink(path) == 0 { result.blobsRemoved += 1; result.bytesRemoved += size }
        }
        sweepIngest()
        return result
    }

    // MARK: Images

    /// The image `reference` names, with its manifest, configuration and layer files; nil when
    /// the store has no such reference.
    public func image(for reference: ImageReference) throws(StoreError) -> StoredImage? {
        let records = try readRefs().images
        // A digest reference also finds the image pulled by tag from the same repository.
        let byDigest = { (r: Record) -> Bool in
            guard let digest = reference.digest, let stored = try? ImageReference(parsing: r.reference) else { return false }
            return stored.host == reference.host && stored.repository == reference.repository && (r.manifest == digest || r.index == digest)
        }
        guard let record = records.first(where: { $0.reference == reference.description }) ?? records.first(where: byDigest) else { return nil }
        let manifest = try decodeManifest(record.manifest)
        let configBytes = try read(manifest.config.digest)
        let configuration: ImageConfiguration
        do { configuration = try JSONDecoder().decode(ImageConfiguration.self, from: Data(configBytes)) }
        catch { throw .badDocument(what: "image configuration \(manifest.config.digest)", reason: "\(error)") }
        var layers: [StoredLayer] = []
        for layer in manifest.layers {
            guard has(layer.digest, size: layer.size) else { throw .missingBlob(layer.digest) }
            layers.append(StoredLayer(descriptor: layer, path: blobPath(layer.digest)))
        }
        let platform = record.platform ?? configuration.os.flatMap { os in configuration.architecture.map { Platform(architecture: $0, os: os) } }
        return StoredImage(reference: reference, manifestDigest: record.manifest, indexDigest: record.index, platform: platform,
                           manifest: manifest, configuration: configuration, layers: layers)
    }

    func decodeManifest(_ digest: String) throws(StoreError) -> ImageManifest {
        let bytes = try read(digest)
        do { return try JSONDecoder().decode(ImageManifest.self, from: Data(bytes)) }
        catch { throw .badDocument(what: "manifest \(digest)", reason: "\(error)") }
    }

    // MARK: Files

    private func readRefs() throws(StoreError) -> RefsFile {
        guard access(refsPath, F_OK) == 0 else { return RefsFile(images: []) }
        let bytes = try Self.readFile(refsPath, limit: 64 << 20)
        do { return try JSONDecoder().decode(RefsFile.self, from: Data(bytes)) }
        catch { throw .badDocument(what: refsPath, reason: "\(error)") }
    }

    /// Read-modify-write of refs.json under its lock; the new file replaces the old by rename.
    private func editRefs(_ change: (inout [Record]) -> Void) throws(StoreError) {
        let lease = try StoreLease(path: root + "/refs.lock", operation: LOCK_EX)
        defer { lease.release() }
        var refs = try readRefs()
        change(&refs.images)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes: [UInt8]
        do { bytes = Array(try encoder.encode(refs)) } catch { throw .badDocument(what: "refs", reason: "\(error)") }
        try Self.writeAtomically(bytes, to: refsPath, directory: root)
    }

    static func writeAtomically(_ bytes: [UInt8], to path: String, directory: String) throws(StoreError) {
        let temp = path + ".tmp.\(getpid())"
        do throws(Errno) {
            let fd = try FileDescriptor.open(temp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
            let failure: Errno? = bytes.withUnsafeBytes { (b) -> Errno? in
                do throws(Errno) { try fd.writeAll(b); return nil } catch { return error }
            }
            if let failure { throw failure }
            _ = try retrying("fsync") { fsync(fd.raw) }
            try fd.close()
            _ = try once("rename") { rename(temp, path) }
        } catch {
            unlink(temp)
            throw .io(path: path, error)
        }
        syncDirectory(directory)
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
    }

    static func readFile(_ path: String, limit: Int) throws(StoreError) -> [UInt8] {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDONLY) } catch { throw .io(path: path, error) }
        let size: Int
        do { size = try fd.size() } catch { throw .io(path: path, error) }
        guard size <= limit else { throw .tooLarge(what: path, limit: limit) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 16)
        defer { buffer.deallocate() }
        var offset = 0
        while offset < size {
            let n: Int
            do { n = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<size])) }
            catch { throw .io(path: path, error) }
            if n == 0 { break }
            offset += n
        }
        return Array(buffer[..<offset])
    }

    static func names(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes ingest files no writer holds: a writer keeps an flock on its temp file until it
    /// commits or gives up, so a file whose lock is free was left by a crash.
    func sweepIngest() {
        for name in Self.names(in: ingestDirectory) {
            let path = ingestDirectory + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { continue }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { unlink(path) }
            close(fd)
        }
    }
}

/// An flock on one of the store's lock files, held until `release` or deinit.
public final class StoreLease: Sendable {
    private let fd: Int32

    init(path: String, operation: Int32) throws(StoreError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path: path, .current("open")) }
        while flock(fd, operation) != 0 {
            if errno == EINTR { continue }
            let e = Errno.current("flock")
            close(fd)
            throw .io(path: path, e)
        }
        self.fd = fd
    }

    public func release() { flock(fd, LOCK_UN) }

    deinit { close(fd) }
}

/// A layer of a stored image: its descriptor and the blob file holding its (compressed) tar.
public struct StoredLayer: Sendable, Equatable {
    public var descriptor: Descriptor
    public var path: String
    /// From the media type; nil for a media type Kiln does not know.
    public var compression: LayerCompression? { LayerCompression(mediaType: descriptor.mediaType) }
}

/// An image in the store, everything the disk builder and the guest need.
public struct StoredImage: Sendable {
    public var reference: ImageReference
    public var manifestDigest: String
    public var indexDigest: String?
    public var platform: Platform?
    public var manifest: ImageManifest
    public var configuration: ImageConfiguration
    /// In the manifest's order, lowest first.
    public var layers: [StoredLayer]
}
