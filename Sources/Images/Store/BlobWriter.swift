import Crypto
import Glibc
import LinuxSys

/// Writes one blob into the store: bytes go to a temp file in ingest/ while their SHA-256 is
/// computed; `commit` fsyncs and renames it into blobs/ only when the digest and size match.
/// Dropped without a commit (an error, a cancelled pull), the temp file is removed.
public final class BlobWriter {
    /// The digest the bytes must hash to; nil when the writer names the blob by what it computes.
    public let digest: String?
    public let expectedSize: Int64?
    public private(set) var written: Int64 = 0
    private let store: ContentStore
    private let tempPath: String
    private var fd: Int32
    private var hasher = SHA256()

    init(store: ContentStore, digest: String?, size: Int64?) throws(StoreError) {
        self.store = store
        self.digest = digest
        self.expectedSize = size
        var attempt = 0
        while true {
            let random = UInt64.random(in: 0...UInt64.max)
            let stem: String = digest.map { String(Digest.hex($0).prefix(16)) } ?? "new"
            let path: String = store.ingestDirectory + "/" + stem + "-" + String(random, radix: 16) + ".partial"
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                if errno == EEXIST && attempt < 8 { attempt += 1; continue }
                throw .io(path: path, .current("open"))
            }
            // The lock tells a sweeping store that this file is in use. A sweep that took the
            // file between open and flock has unlinked it: then start again under a new name.
            while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
            var st = stat()
            if fstat(fd, &st) == 0 && st.st_nlink == 0 && attempt < 8 { close(fd); attempt += 1; continue }
            self.tempPath = path
            self.fd = fd
            return
        }
    }

    deinit { discard() }

    /// Appends bytes; refuses more than the expected size at once, so that a hostile server
    /// cannot fill the disk.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        guard fd >= 0 else { return }
        if let expectedSize, written + Int64(bytes.count) > expectedSize {
            let total = written + Int64(bytes.count)
            discard()
            throw .sizeMismatch(digest: digest ?? "blob", expected: expectedSize, actual: total)
        }
        hasher.update(bufferPointer: bytes)
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                let e = Errno.current("write")
                discard()
                throw .io(path: store.blobDirectory, e)
            }
            offset += n
        }
        written += Int64(bytes.count)
    }

    public func write(_ bytes: [UInt8]) throws(StoreError) {
        let failure: StoreError? = bytes.withUnsafeBytes { (b) -> StoreError? in
            do throws(StoreError) { try write(b); return nil } catch { return error }
        }
        if let failure { throw failure }
    }

    /// Verifies and publishes the blob; returns its path in the store.
    @discardableResult
    public func commit() throws(StoreError) -> String { try commitNamed().path }

    /// Verifies and publishes the blob; returns its digest and path in the store.
    public func commitNamed() throws(StoreError) -> (digest: String, path: String) {
        guard fd >= 0 else { throw .io(path: tempPath, Errno(EBADF, call: "commit")) }
        if let expectedSize, written != expectedSize {
            discard()
            throw .sizeMismatch(digest: digest ?? "blob", expected: expectedSize, actual: written)
        }
        let actual = "sha256:" + ContentStore.hex(hasher.finalize())
        if let digest, actual != digest {
            discard()
            throw .digestMismatch(expected: digest, actual: actual)
        }
        if fsync(fd) != 0 {
            let e = Errno.current("fsync")
            discard()
            throw .io(path: store.blobDirectory, e)
        }
        let destination = store.blobPath(actual)
        if rename(tempPath, destination) != 0 {
            let e = Errno.current("rename")
            discard()
            throw .io(path: destination, e)
        }
        close(fd)
        fd = -1
        ContentStore.syncDirectory(store.blobDirectory)
        return (actual, destination)
    }

    /// Drops what was written.
    public func discard() {
        guard fd >= 0 else { return }
        unlink(tempPath)
        close(fd)
        fd = -1
    }
}
