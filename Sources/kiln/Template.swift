import ArgumentParser
import Glibc
import Images
import LinuxSys
import Sandbox
import VMM

/// `kiln template create|list|rm`: snapshots that `kiln run` starts from.
struct TemplateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Snapshots that kiln run starts from.",
        discussion: """
            A template is a snapshot of a sandbox taken as soon as its agent is up; `kiln run --template NAME` \
            restores it instead of booting. Templates live in /var/cache/kiln/templates.
            """,
        subcommands: [Create.self, List.self, Remove.self])

    func run() throws { missingSubcommand("template", "create, list or rm") }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Boot a sandbox and save it as a template.",
            discussion: """
                Without NAME, create makes the automatic template that `kiln run` uses for that image and kernel. \
                IMAGE is as for kiln run: Kiln's image, a disk file or an OCI image reference (pulled on first use); \
                an OCI image's Entrypoint, Cmd, Env, WorkingDir and User go with the template.
                """)

        @Argument(help: ArgumentHelp("The template's name (default: the automatic template's).", valueName: "NAME"))
        var name: String?
        @OptionGroup var sandbox: SandboxOptions

        /// Every value checked before any work (issue 14).
        func checkedSettings() throws -> SandboxSettings {
            let settings = try sandbox.settings()
            if let name { try SandboxSettings.checkTemplate(name) }
            try settings.validate()
            return settings
        }

        func validate() throws { _ = try checkedSettings() }

        func run() async throws {
            let settings = try checkedSettings()
            // Every image boots through the agent disk, Kiln's own too: one boot path (docs/images.md).
            let kernel: String, image: String, agentDisk: String
            let imageConfig: ImageConfiguration.RunConfig?
            var root: RootImage?
            do {
                kernel = try sandbox.machine.kernel ?? DefaultImages.kernel()
                agentDisk = try DefaultImages.agentDisk()
                if let disk = sandbox.rootDisk {
                    guard access(disk, R_OK) == 0 else { fail("cannot read root disk \(disk): \(String(cString: strerror(errno)))") }
                    image = DefaultImages.resolved(disk)
                } else {
                    root = try await RootImage.resolve(sandbox.image, pull: sandbox.pull)
                    image = root?.disk ?? ""
                }
                var run = RunOptions()
                run.imageConfig = sandbox.imageConfig
                imageConfig = try root?.runConfig ?? imageRunConfig(run)
            } catch let error as DefaultImages.Failure { fail(error.message) } catch { fail("\(error)") }
            var config = Sandbox.Configuration(kernelPath: kernel, imagePath: image)
            config.agentDisk = agentDisk
            config.cpus = settings.cpus
            config.memoryMiB = settings.memoryMiB
            config.bootTimeout = settings.bootTimeout
            config.seccomp = seccompMode(disabled: false)
            let templateName = name ?? Templates.autoName(for: config)
            writeRaw(2, "kiln: booting a sandbox for template \(templateName)...\n")
            do {
                let sandbox = try await Templates.create(templateName, config: config, imageConfig: imageConfig)
                sandbox.stop()
            } catch { fail("\(error)") }
            writeRaw(1, Templates.path(templateName) + "\n")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the templates.")

        func run() {
            for name in Templates.list() { writeRaw(1, name + (Templates.unusableReason(name).map { "  (unusable: \($0))" } ?? "") + "\n") }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a template.")

        @Argument(help: ArgumentHelp("The template.", valueName: "NAME"))
        var name: String

        func run() {
            guard Templates.remove(name) else { fail("no template named '\(name)'") }
        }
    }
}
