import LinuxSys

/// Where an image's layers come from: a blob in the content store.
public struct LayerSource: Sendable, Equatable {
    public var path: String
    public var compression: LayerCompression
    /// The blob's digest ("sha256:..."), named in every error about the layer.
    public var digest: String

    public init(path: String, compression: LayerCompression, digest: String) {
        self.path = path; self.compression = compression; self.digest = digest
    }

    /// A manifest's layer stored at `path`; nil for a media type that is not a layer Kiln unpacks.
    public init?(_ descriptor: Descriptor, path: String) {
        guard let compression = LayerCompression(mediaType: descriptor.mediaType) else { return nil }
        self.init(path: path, compression: compression, digest: descriptor.digest)
    }
}

/// Bounds on what a layer may make the host write. A layer is untrusted input: a few kilobytes of
/// gzip can claim terabytes.
public struct UnpackLimits: Sendable {
    /// The largest single entry (its declared size, whatever its type).
    public var maxEntrySize: Int64
    /// The sum of all entries' sizes over all layers of the image.
    public var maxTotalSize: Int64
    /// Entries over all layers, whiteouts and directories included.
    public var maxEntries: Int

    public init(maxEntrySize: Int64 = 8 << 30, maxTotalSize: Int64 = 32 << 30, maxEntries: Int = 4_000_000) {
        self.maxEntrySize = maxEntrySize; self.maxTotalSize = maxTotalSize; self.maxEntries = maxEntries
    }
}

/// A layer that could not be applied, naming the layer (its digest) and the entry.
public struct UnpackError: Error, CustomStringConvertible, Sendable {
    public enum Reason: Sendable, Equatable {
        /// The layer's bytes: a corrupt or truncated archive or compressed stream.
        case archive(TarError)
        /// An absolute path or one with a `..` component.
        case unsafePath
        /// A parent of the entry (or of a hard link's target) is a symbolic link.
        case throughSymlink(String)
        /// A parent of the entry is neither a directory nor absent.
        case notADirectory(String)
        /// A hard link whose target is not an entry already inside the root (absent, a directory).
        case badHardLink(String)
        case entryTooLarge(size: Int64, limit: Int64)
        case imageTooLarge(limit: Int64)
        case tooManyEntries(limit: Int)
        /// GNU sparse files are refused: their stored map could claim any apparent size.
        case sparse
        case unsupportedType(UInt8)
        /// Writing the root directory failed (full disk, no permission to make device nodes).
        case filesystem(Errno)
    }

    public var layer: String
    public var entry: String?
    public var reason: Reason

    public init(layer: String, entry: String?, reason: Reason) {
        self.layer = layer; self.entry = entry; self.reason = reason
    }

    public var description: String {
        let what: String
        switch reason {
        case .archive(let e): what = "\(e)"
        case .unsafePath: what = "absolute path or '..' component refused"
        case .throughSymlink(let p): what = "refused: \(p) is a symbolic link (entries are never written through one)"
        case .notADirectory(let p): what = "\(p) is not a directory"
        case .badHardLink(let why): what = "hard link refused: \(why)"
        case .entryTooLarge(let size, let limit): what = "entry of \(size) bytes exceeds the limit of \(limit)"
        case .imageTooLarge(let limit): what = "the image's entries exceed the limit of \(limit) bytes in all"
        case .tooManyEntries(let limit): what = "more than \(limit) entries"
        case .sparse: what = "GNU sparse files are not supported in layers"
        case .unsupportedType(let t): what = "unsupported entry type '\(Character(Unicode.Scalar(t)))'"
        case .filesystem(let e): what = "\(e)"
        }
        if let entry { return "layer \(layer): entry '\(entry)': \(what)" }
        return "layer \(layer): \(what)"
    }
}
