import Glibc
import Images
import LinuxSys
import Sandbox
import VMM

let templateUsage = """
    usage: kiln template create [NAME] [--image IMAGE] [--kernel PATH] [--memory MIB] [--cpus N]
                                [--registry-auth FILE] [--insecure-registry HOST]...
           kiln template list
           kiln template rm NAME

    A template is a snapshot of a sandbox taken as soon as its agent is up; `kiln run --template
    NAME` restores it instead of booting. Without NAME, create makes the automatic template that
    `kiln run` uses for that image and kernel. Templates live in /var/cache/kiln/templates.
    IMAGE is as for kiln run: Kiln's image, a disk file or an OCI image reference (pulled on first
    use); an OCI image's Entrypoint, Cmd, Env, WorkingDir and User go with the template.
    """

func templateCommand(_ args: ArraySlice<String>) async -> Int32 {
    guard let verb = args.first else { fail(templateUsage, code: 2) }
    let rest = args.dropFirst()
    switch verb {
    case "create":
        var name: String?
        var options = rest
        if let first = options.first, !first.hasPrefix("-") { name = first; options = options.dropFirst() }
        let parsed: Arguments
        let cpus: Int, memory: Int
        do {
            // --root-disk and --image-config are internal, as for kiln run (Run.swift).
            parsed = try Arguments(options, options: ["image", "kernel", "memory", "cpus", "boot-timeout", "root-disk", "image-config",
                                                     "registry-auth", "insecure-registry"], flags: [])
            cpus = try parsed.int("cpus", default: 1)
            memory = try parsed.int("memory", default: 256)
        } catch { fail("\(error.message)\n\(templateUsage)", code: 2) }
        if parsed.string("root-disk") != nil && parsed.string("image") != nil {
            fail("--root-disk and --image name two root filesystems: give one", code: 2)
        }
        // Every image boots through the agent disk, Kiln's own too: one boot path (docs/images.md).
        let kernel: String, image: String, agentDisk: String
        let imageConfig: ImageConfiguration.RunConfig?
        var root: RootImage?
        do {
            kernel = try parsed.string("kernel") ?? DefaultImages.kernel()
            agentDisk = try DefaultImages.agentDisk()
            if let disk = parsed.string("root-disk") {
                guard access(disk, R_OK) == 0 else { fail("cannot read root disk \(disk): \(String(cString: strerror(errno)))") }
                image = DefaultImages.resolved(disk)
            } else {
                var pull = RootImage.PullSettings(registryAuth: parsed.string("registry-auth"))
                pull.insecureRegistries = parsed.all("insecure-registry")
                root = try await RootImage.resolve(parsed.string("image"), pull: pull)
                image = root?.disk ?? ""
            }
            var run = RunOptions()
            run.imageConfig = parsed.string("image-config")
            imageConfig = try root?.runConfig ?? imageRunConfig(run)
        } catch let error as DefaultImages.Failure { fail(error.message) } catch { fail("\(error)") }
        var config = Sandbox.Configuration(kernelPath: kernel, imagePath: image)
        config.agentDisk = agentDisk
        config.cpus = cpus
        config.memoryMiB = memory
        config.seccomp = seccompMode(disabled: false)
        let templateName = name ?? Templates.autoName(for: config)
        writeRaw(2, "kiln: booting a sandbox for template \(templateName)...\n")
        do {
            let sandbox = try await Templates.create(templateName, config: config, imageConfig: imageConfig)
            sandbox.stop()
        } catch { fail("\(error)") }
        writeRaw(1, Templates.path(templateName) + "\n")
        return 0
    case "list":
        for name in Templates.list() { writeRaw(1, name + (Templates.usable(name) ? "" : "  (unusable: another Kiln or host)") + "\n") }
        return 0
    case "rm":
        guard let name = rest.first else { fail("kiln template rm needs a NAME", code: 2) }
        guard Templates.remove(name) else { fail("no template named '\(name)'") }
        return 0
    case "--help", "-h", "help":
        writeRaw(1, templateUsage + "\n")
        return 0
    default:
        fail("unknown template command '\(verb)'\n\(templateUsage)", code: 2)
    }
}
