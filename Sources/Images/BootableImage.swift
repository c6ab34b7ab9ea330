import Glibc

/// An image ready to boot: its root disk (built once per image) and its run config.
public struct BootableImage: Sendable {
    public var image: StoredImage
    /// The ext4 root disk, `<disks>/sha256-<manifest hex>.ext4`.
    public var diskPath: String
    public var runConfig: ImageConfiguration.RunConfig
}

/// Why an image cannot be made bootable; one line each.
public enum BootableImageError: Error, Sendable, CustomStringConvertible {
    case store(StoreError)
    case pull(RegistryError)
    case notPulled(ImageReference)
    case platform(ImageReference, String)
    case layerMediaType(ImageReference, String)
    case disk(ImageReference, RootDiskError)

    public var description: String {
        switch self {
        case .store(let e): "image store: \(e)"
        case .pull(let e): "\(e)"
        case .notPulled(let r): "image \(r) is not in the store (kiln image pull \(r))"
        case .platform(let r, let p): "image \(r) is for \(p); Kiln runs linux/amd64 images"
        case .layerMediaType(let r, let t): "image \(r) has a layer of media type \(t), which Kiln cannot unpack"
        case .disk(let r, let e): "cannot make the root disk of \(r): \(e)"
        }
    }
}

public enum BootableImages {
    /// The store's image for `reference` (pulled first when the store lacks it and `pull` is
    /// given) and its root disk, built on first use under `diskCache` and reused after.
    public static func prepare(_ reference: ImageReference, store: ContentStore, diskCache: String, pull: PullOptions?,
                               progress: (@Sendable (PullEvent) -> Void)? = nil,
                               diskOptions: RootDiskOptions = RootDiskOptions(),
                               willBuildDisk: (@Sendable () -> Void)? = nil) async throws(BootableImageError) -> BootableImage {
        var stored: StoredImage?
        do { stored = try store.image(for: reference) } catch { throw .store(error) }
        if stored == nil {
            guard let pull else { throw .notPulled(reference) }
            do { stored = try await Registry.pull(reference, into: store, options: pull, progress: progress) } catch { throw .pull(error) }
        }
        guard let image = stored else { throw .notPulled(reference) }
        if let p = image.platform, p.os != "linux" || p.architecture != "amd64" {
            throw .platform(reference, p.os + "/" + p.architecture)
        }
        var layers: [LayerSource] = []
        for layer in image.layers {
            guard let source = LayerSource(layer.descriptor, path: layer.path) else {
                throw .layerMediaType(reference, layer.descriptor.mediaType)
            }
            layers.append(source)
        }
        let key = image.manifestDigest
        let disk: String
        if let cached = RootDisk.cached(cacheRoot: diskCache, key: key, format: diskOptions.format) {
            disk = cached
        } else {
            willBuildDisk?()
            do { disk = try RootDisk.build(layers: layers, cacheRoot: diskCache, key: key, options: diskOptions) } catch { throw .disk(reference, error) }
        }
        return BootableImage(image: image, diskPath: disk, runConfig: image.configuration.config ?? ImageConfiguration.RunConfig())
    }
}
