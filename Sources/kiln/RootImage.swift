import Glibc
import Images
import LinuxSys
import Sandbox

/// What `--image X` names, for `kiln run` and `kiln template create`: Kiln's own image
/// (`default`, `debian`, a NAME.ext4 in the cache), a disk file, or an OCI image reference,
/// pulled and made into a root disk on first use (docs/images.md).
struct RootImage {
    var disk: String
    /// The OCI image's run config; nil for Kiln's images and disk files.
    var runConfig: ImageConfiguration.RunConfig?

    /// Where pull options come from on the command line.
    struct PullSettings {
        var registryAuth: String?
        var insecureRegistries: [String] = []
    }

    static func resolve(_ name: String?, pull settings: PullSettings) async throws -> RootImage {
        guard let name, let reference = ociReference(name) else {
            // A name that is no file and no image of Kiln's but was meant as a reference: say
            // what is wrong with it, rather than that no file of that name exists.
            if let name, access(name, F_OK) != 0, !name.hasPrefix("/"), !name.hasPrefix("./"), !name.hasPrefix("../"),
               name.contains("/") || name.contains(":") || name.contains("@") {
                do { _ = try ImageReference(parsing: name) } catch {
                    throw DefaultImages.Failure(message: "\(error), nor a disk file")
                }
            }
            return RootImage(disk: try DefaultImages.image(named: name), runConfig: nil)
        }
        let store: ContentStore
        do { store = try ContentStore(root: Templates.cacheDirectory + "/oci") } catch { throw DefaultImages.Failure(message: "image store: \(error)") }
        var options = PullOptions(insecureRegistries: Set(settings.insecureRegistries))
        if let path = RegistryCredentials.configPath(explicit: settings.registryAuth, dockerConfig: DefaultImages.env("DOCKER_CONFIG"),
                                                     home: DefaultImages.env("HOME")) {
            options.credentials = try RegistryCredentials.load(path: path, required: settings.registryAuth != nil)
        }
        let display = isatty(2) == 1 ? PullDisplay() : nil
        var progress: (@Sendable (PullEvent) -> Void)?
        if let display { progress = { display.handle($0) } }
        let diskCache = Templates.cacheDirectory + "/oci/disks"
        if (try? store.image(for: reference)) ?? nil == nil {
            writeRaw(2, "kiln: pulling \(reference) (first use)...\n")
        }
        let image: BootableImage
        do {
            image = try await BootableImages.prepare(reference, store: store, diskCache: diskCache, pull: options, progress: progress,
                                                     willBuildDisk: { display?.finish(); writeRaw(2, "kiln: making the root disk of \(reference) (once per image)...\n") })
        } catch { display?.finish(); throw DefaultImages.Failure(message: "\(error)") }
        display?.finish()
        return RootImage(disk: image.diskPath, runConfig: image.runConfig)
    }

    /// `name` as an OCI reference, or nil when it names one of Kiln's images or a file.
    static func ociReference(_ name: String) -> ImageReference? {
        if name == "default" || name == "debian" { return nil }
        if name.hasPrefix("/") || name.hasPrefix("./") || name.hasPrefix("../") || access(name, F_OK) == 0 { return nil }
        // A bare name is one of Kiln's images (NAME.ext4 in the cache): a pull from docker.io
        // is asked for with a tag or a host (`alpine:latest`, `docker.io/library/alpine`).
        if !name.contains("/") && !name.contains(":") && !name.contains("@") { return nil }
        return try? ImageReference(parsing: name)
    }
}
