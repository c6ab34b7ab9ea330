import FoundationEssentials

// The OCI image-spec documents Kiln reads and writes (image-spec v1.1: descriptor.md,
// manifest.md, image-index.md, config.md). Docker's schema-2 manifest and manifest list
// have the same JSON shape under other media types, so one model serves both.
// Fields Kiln does not use are not modelled; unknown fields are ignored when decoding.

public enum MediaType {
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociConfig = "application/vnd.oci.image.config.v1+json"
    public static let ociLayer = "application/vnd.oci.image.layer.v1.tar"
    public static let ociLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let ociLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"

    public static func isIndex(_ t: String) -> Bool { t == ociIndex || t == dockerManifestList }
    public static func isManifest(_ t: String) -> Bool { t == ociManifest || t == dockerManifest }
}

/// How a layer blob is compressed, from its media type.
public enum LayerCompression: Sendable, Equatable {
    case none, gzip, zstd

    public init?(mediaType: String) {
        switch mediaType {
        case MediaType.ociLayer, "application/vnd.oci.image.layer.nondistributable.v1.tar": self = .none
        case MediaType.ociLayerGzip, MediaType.dockerLayerGzip, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": self = .gzip
        case MediaType.ociLayerZstd, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": self = .zstd
        default: return nil
        }
    }
}

public struct Platform: Codable, Sendable, Equatable {
    public var architecture: String
    public var os: String
    public var variant: String?

    public init(architecture: String, os: String, variant: String? = nil) {
        self.architecture = architecture; self.os = os; self.variant = variant
    }
}

public struct Descriptor: Codable, Sendable, Equatable {
    public var mediaType: String
    /// "sha256:<64 hex digits>"
    public var digest: String
    public var size: Int64
    public var platform: Platform?
    public var annotations: [String: String]?

    public init(mediaType: String, digest: String, size: Int64, platform: Platform? = nil, annotations: [String: String]? = nil) {
        self.mediaType = mediaType; self.digest = digest; self.size = size; self.platform = platform; self.annotations = annotations
    }
}

/// An image index (OCI) or manifest list (Docker).
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
}

public struct ImageManifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var config: Descriptor
    public var layers: [Descriptor]

    public init(mediaType: String?, config: Descriptor, layers: [Descriptor]) {
        self.schemaVersion = 2; self.mediaType = mediaType; self.config = config; self.layers = layers
    }
}

/// The image configuration blob (config.md): what a container of the image runs, and how.
public struct ImageConfiguration: Codable, Sendable {
    public var architecture: String?
    public var os: String?
    public var config: RunConfig?
    public var rootfs: RootFS?

    public struct RunConfig: Codable, Sendable, Equatable {
        /// "name", "uid", "name:group", "uid:gid" and the mixed forms; resolved through the
        /// image's own /etc/passwd and /etc/group.
        public var User: String?
        /// "NAME=value" entries.
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var WorkingDir: String?
        public var Labels: [String: String]?
        public var StopSignal: String?

        public init(User: String? = nil, Env: [String]? = nil, Entrypoint: [String]? = nil, Cmd: [String]? = nil,
                    WorkingDir: String? = nil, Labels: [String: String]? = nil, StopSignal: String? = nil) {
            self.User = User; self.Env = Env; self.Entrypoint = Entrypoint; self.Cmd = Cmd
            self.WorkingDir = WorkingDir; self.Labels = Labels; self.StopSignal = StopSignal
        }
    }

    public struct RootFS: Codable, Sendable {
        public var type: String
        /// Digests of the uncompressed layer tars, in order.
        public var diff_ids: [String]
    }
}
