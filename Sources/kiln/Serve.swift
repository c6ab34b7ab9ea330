import ArgumentParser
import CLinux
import Glibc
import Images
import Jailer
import KilnNet
import KilnService
import LinuxSys
import Logging
import Sandbox
import Seccomp
import Synchronization
import VMM

/// `kiln serve`: the E2B-compatible multi-tenant service (docs/service.md).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "The E2B-compatible sandbox service.",
        discussion: """
            Serves E2B's API (control and in-sandbox) on one listener, so that the e2b SDK drives Kiln sandboxes: \
            E2B_API_URL=http://HOST:PORT E2B_SANDBOX_URL=http://HOST:PORT. Templates are Kiln templates by name \
            (kiln template create NAME); `base`, the SDK's default, is a Debian image with bash and python3, built \
            on first use. See docs/service.md.
            """)

    @Option(parsing: .unconditional, help: ArgumentHelp("Where to listen (default 127.0.0.1:3000).", valueName: "HOST:PORT"))
    var listen = "127.0.0.1:3000"
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        {"tenants": [{"name", "apiKeys": [...], "maxSandboxes", "maxMemoryMiB"}]}; without it one key is generated on \
        first start and printed once.
        """, valueName: "FILE"))
    var tenants: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("Sandbox records, paused sandboxes and the generated key (default /var/lib/kiln/serve).",
                                                          valueName: "DIR"))
    var stateDir = "/var/lib/kiln/serve"
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        N: restored sandboxes kept ready per template (default 1; 0: no pools), a pool fills after its template's \
        first create; TEMPLATE=N: that many for TEMPLATE, filled at start (repeatable).
        """, valueName: "N|TEMPLATE=N"))
    var warm: [String] = []
    @Option(parsing: .unconditional, help: ArgumentHelp("Below this MemAvailable the pools stop refilling and empty (default 1024).",
                                                          valueName: "MiB"))
    var warmMinAvailable: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Park the vCPUs of a sandbox nobody has talked to for this long (a pool member, one between commands); the \
        next request resumes it (default 0: never; the density benchmark uses 10).
        """, valueName: "SECONDS"))
    var idlePause: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        As root: the owner of new volumes' directories, and so the host user that sandboxes with volumes run as \
        (default 1000:1000, E2B's `user`, whom the guest's commands run as; see docs/service.md).
        """, valueName: "UID:GID"))
    var volumeOwner: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        The most bytes each sandbox's console log keeps (default 1048576); when full it moves to console.log.1 and starts over.
        """, valueName: "BYTES"))
    var consoleLimit: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Limit every sandbox's disks to BYTES_PER_S (and N requests a second), as `kiln run --disk-rate` (default: the template's).
        """, valueName: "BYTES_PER_S[,ops=N][,burst=BYTES]"))
    var diskRate: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Limit what each sandbox with a network receives and sends, as `kiln run --net-rate` (default: the template's).
        """, valueName: "BYTES_PER_S[,ops=N][,burst=BYTES]"))
    var netRate: String?
    @Flag(help: "As root, do not confine the service to its seccomp policy (debugging only; KILN_SECCOMP=trap|log for gentler debugging).")
    var noSeccomp = false

    func run() async throws { Glibc.exit(await serveCommand(self)) }
}

func serveCommand(_ options: ServeCommand) async -> Int32 {
    var pool = PoolSettings()
    for value in options.warm {
        let parts = value.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard let n = Int(parts.last ?? ""), (0...64).contains(n), parts.count == 1 || !parts[0].isEmpty else {
            fail("--warm must be N or TEMPLATE=N with N from 0 to 64, not '\(value)'", code: 2)
        }
        if parts.count == 2 { pool.sizes[String(parts[0])] = n } else { pool.defaultSize = n }
    }
    if let v = options.warmMinAvailable {
        guard let mib = Int(v), mib >= 0 else { fail("--warm-min-available must be a number of MiB, not '\(v)'", code: 2) }
        pool.minAvailableMiB = mib
    }
    var idlePause: Double? = SandboxManager.defaultIdlePause
    if let v = options.idlePause {
        guard let seconds = Double(v), seconds >= 0, seconds.isFinite else {
            fail("--idle-pause must be a number of seconds (0: never), not '\(v)'", code: 2)
        }
        idlePause = seconds == 0 ? nil : seconds
    }
    var volumeOwner: (uid: UInt32, gid: UInt32)?
    if let v = options.volumeOwner {
        let parts = v.split(separator: ":", omittingEmptySubsequences: false)
        // Root cannot own a volume: a jailed VMM runs as its volumes' owner, never as root.
        guard parts.count == 2, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]), uid > 0, gid > 0 else {
            fail("--volume-owner must be UID:GID, both non-zero numbers, not '\(v)'", code: 2)
        }
        volumeOwner = (uid, gid)
    }
    var consoleLimit = Sandbox.defaultConsoleLimit
    var limits: Sandbox.Limits?
    do throws(SettingError) {
        if let v = options.consoleLimit { consoleLimit = try SandboxSettings.parseInt(v, .consoleLimit, in: SandboxSettings.consoleLimitRange) }
        if options.diskRate != nil || options.netRate != nil {
            var l = Sandbox.Limits()
            if let v = options.diskRate { l.disk = try SandboxSettings.parseRate(v, .diskRate) }
            if let v = options.netRate { l.net = try SandboxSettings.parseRate(v, .netRate) }
            limits = l
        }
    } catch { fail(error.description, code: 2) }
    let listen = options.listen
    guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
        fail("--listen must be HOST:PORT with a port from 0 to 65535, not '\(listen)'", code: 2)
    }
    var host = String(listen[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    let bindHost = host
    let stateDir = options.stateDir
    var made = stateDir.hasPrefix("/") ? "" : "."
    for part in stateDir.split(separator: "/") { made += "/" + part; _ = Glibc.mkdir(made, 0o700) }
    guard access(stateDir, W_OK) == 0 else { fail("cannot write to the state directory \(stateDir)") }

    // As root each sandbox's VMM is a jailed process. The launcher starts them, so that this
    // process can be confined to the service policy once it serves (docs/security.md, "The
    // service's launcher"); it is started first, before this process's threads matter.
    // Each sandbox holds about six descriptors here (agent socket, command channel, pidfd, console,
    // ...): a soft limit of 1024 would stop the service at ~160 sandboxes. Raise it to the hard one.
    var files = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0 && files.rlim_cur < files.rlim_max {
        files.rlim_cur = files.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
    }
    let confine = geteuid() == 0
    let filters: SeccompFilters?
    var networks: LauncherNetworks?
    if confine {
        do {
            let launcher = try VMMLauncher.start(executable: "/proc/self/exe", arguments: ["__launcher"])
            JailedVMM.spawner = launcher
            networks = LauncherNetworks(launcher: launcher)
            let off = options.noSeccomp
            if off { writeRaw(2, "kiln serve: WARNING: --no-seccomp: the service runs WITHOUT its seccomp policy (debugging only)\n") }
            filters = try SeccompFilters(mode: off ? .off : seccompMode(disabled: false))
            ServeTemplates.runsPrograms.withLock { $0 = off }
        } catch { fail("cannot start the service: \(error)") }
    } else {
        filters = nil
    }

    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = DefaultImages.env("KILN_LOG").flatMap { Logger.Level(rawValue: $0) } ?? .info
        return h
    }
    let logger = Logger(label: "kiln.serve")

    let tenants: Tenants
    do {
        if let file = options.tenants {
            tenants = try Tenants.load(path: file)
        } else {
            let (local, generated) = try Tenants.local(stateDirectory: stateDir)
            tenants = local
            if let generated { writeRaw(1, "kiln serve: generated API key (stored in \(stateDir)/api-key): \(generated)\n") }
        }
    } catch { fail("\(error)") }

    let manager: SandboxManager
    var settings = SandboxManager.Settings(stateDirectory: stateDir)
    settings.pool = pool
    settings.idlePause = idlePause
    if let volumeOwner, geteuid() == 0 { settings.volumeOwner = volumeOwner }
    settings.networks = networks
    settings.consoleLimit = consoleLimit
    settings.limits = limits
    var networkTemplates: SandboxManager.TemplateResolver?
    if let launcherNetworks = networks {
        networkTemplates = { name in try await ServeTemplates.resolve(name, network: launcherNetworks) }
    }
    do {
        manager = try SandboxManager(settings: settings, tenants: tenants, resolveTemplate: ServeTemplates.resolve,
                                     resolveNetworkTemplate: networkTemplates, metrics: Metrics(), logger: logger)
    } catch { fail("cannot start the service: \(error)") }
    await manager.recover()
    await manager.startTimeoutSweep()
    stopPoolsOnSignal(manager)

    // What the service would otherwise run programs for (the confined service cannot): the
    // kernel and Debian image of the `base` template, built now if the template is missing.
    if confine && !Templates.usable("base") {
        _ = try? DefaultImages.kernel()
        _ = try? DefaultImages.image(named: "debian")
    }

    await manager.startPools()
    let service = Service(manager: manager, tenants: tenants, logger: logger)
    do {
        try await HTTPServer(host: bindHost, port: port, logger: logger).run(handler: service) { address in
            // Bound: from here on every thread, now and later, is held to the service policy.
            if let filters {
                do { try filters.installOnAllThreads(.service) } catch { fail("\(error)") }
            }
            writeRaw(2, "kiln serve: listening on http://\(listen.hasSuffix(":0") ? "\(bindHost):\(address.port ?? port)" : listen)\n")
        }
    } catch {
        fail("cannot serve on \(listen): \(error)")
    }
    return 0
}

/// SIGTERM and SIGINT stop the warm pools' VMs, then the service; the tenants' sandboxes run on
/// (they are found again by the next start). A plain handler writes to a pipe, since the
/// service's many threads cannot all block the signals for sigwait.
func stopPoolsOnSignal(_ manager: SandboxManager) {
    var fds: [Int32] = [-1, -1]
    guard kiln_pipe2(&fds, O_CLOEXEC) == 0 else { return }
    for s in [SIGTERM, SIGINT] { _ = kiln_notify_on_signal(s, fds[1]) }
    let readEnd = fds[0]
    _ = try? LinuxSys.Thread.spawn(name: "kiln-stop") {
        var byte: UInt8 = 0
        while Glibc.read(readEnd, &byte, 1) != 1 {}
        let done = Mutex(false)
        Task {
            await manager.shutdown()
            done.withLock { $0 = true }
        }
        // A stop that hangs must not keep the service up: a second signal, or 30 s, ends it.
        var waited = 0
        while !done.withLock({ $0 }) && waited < 300 {
            var poll = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            if Glibc.poll(&poll, 1, 100) == 1 { break }
            waited += 1
        }
        writeRaw(2, "kiln serve: stopped (signal \(byte)); the sandboxes run on\n")
        _exit(0)
    }
}

/// Templates for the service: Kiln templates by name; `base` is made on first use from the
/// Debian image (built on first use too), one build at a time.
enum ServeTemplates {
    static let building = Mutex(false)

    /// Whether this process may run programs (mkfs.ext4 for an image's root disk): not once
    /// confined to the service policy.
    static let runsPrograms = Mutex(true)

    @Sendable static func resolve(_ name: String) async throws -> String { try await resolve(name, network: nil) }

    /// With `network`, the template's variant with a network device (docs/net.md, "Networks in
    /// the service"): `base` has `base-net`, an image its automatic template with a network; a
    /// template made by `kiln template create` serves only if it was made with one.
    static func resolve(_ name: String, network: LauncherNetworks?) async throws -> String {
        let own = network == nil || name != "base" ? name : "base-net"
        if Templates.usable(own) && (own != "base-net" || twinMatchesBase()) {
            guard network == nil || own == "base-net" || (try? SnapshotInfo.read(directory: Templates.path(own)))?.config.net != nil else {
                throw APIError(400, "template '\(name)' has no network device: a sandbox with a network needs `base` or an image")
            }
            return Templates.path(own)
        }
        // An OCI image reference as a template id: the image's automatic template, as `kiln run --image` makes.
        if name.contains("/") || name.contains(":"), let reference = RootImage.ociReference(name) {
            return try await imageTemplate(name, reference, network: network)
        }
        guard name == "base" else {
            // Missing, or there and unusable (another Kiln, or its image changed since): which, in the message.
            throw APIError(404, "\(Templates.problem(own) ?? "template '\(name)' not found") (make it with `kiln template create \(name)`)")
        }
        let ready = { Templates.usable(own) && (own != "base-net" || twinMatchesBase()) }
        while building.withLock({ b in defer { b = true }; return b }) {
            try await Task.sleep(nanoseconds: 200_000_000)
            if ready() { return Templates.path(own) }
        }
        defer { building.withLock { $0 = false } }
        if ready() { return Templates.path(own) }
        var config: Sandbox.Configuration
        do {
            config = Sandbox.Configuration(kernelPath: try DefaultImages.kernel(), imagePath: try DefaultImages.image(named: "debian"))
            config.agentDisk = try DefaultImages.agentDisk()
        } catch { throw APIError(500, "cannot build the base template: \(error.message)") }
        try await makeTemplate(own, config, network: network)
        return Templates.path(own)
    }

    /// Whether `base-net` was made from the files `base` is (kernel, image, agent disk): a `base`
    /// remade after a new agent or image makes its network twin stale, so it is made again.
    static func twinMatchesBase() -> Bool {
        guard let base = try? SnapshotInfo.read(directory: Templates.path("base")) else { return true }
        guard let twin = try? SnapshotInfo.read(directory: Templates.path("base-net")) else { return false }
        return twin.config.kernelPath == base.config.kernelPath && twin.config.disks.map(\.path) == base.config.disks.map(\.path)
    }

    /// Boots `config` once and saves it as template `name`; with `network`, on a network of its
    /// own that nothing can leave (the template's boot needs none; a sandbox restored from it
    /// gets its own).
    static func makeTemplate(_ name: String, _ config: Sandbox.Configuration, network: LauncherNetworks?,
                             imageConfig: ImageConfiguration.RunConfig? = nil) async throws {
        var config = config
        if let network { config.network = try await BlockingExecutor.service.run { try network.create(EgressPolicy(internet: false)) } }
        defer { config.network?.close() }
        let sandbox = try await Templates.create(name, config: config, imageConfig: imageConfig)
        sandbox.stop()
    }
}

extension ServeTemplates {
    /// The template of OCI image `reference`: found, or made (pulled, its root disk built, booted once).
    static func imageTemplate(_ name: String, _ reference: ImageReference, network: LauncherNetworks?) async throws -> String {
        func config(disk: String) throws -> Sandbox.Configuration {
            var c = Sandbox.Configuration(kernelPath: try DefaultImages.kernel(), imagePath: disk)
            c.agentDisk = try DefaultImages.agentDisk()
            return c
        }
        let store: ContentStore
        do { store = try ContentStore(root: Templates.cacheDirectory + "/oci") } catch { throw APIError(500, "image store: \(error)") }
        if let image = try? store.image(for: reference),
           let disk = RootDisk.cached(cacheRoot: Templates.cacheDirectory + "/oci/disks", key: image.manifestDigest),
           let c = try? config(disk: disk), Templates.usable(Templates.autoName(for: c, withNetwork: network != nil)) {
            return Templates.path(Templates.autoName(for: c, withNetwork: network != nil))
        }
        guard runsPrograms.withLock({ $0 }) || (try? store.image(for: reference)).flatMap({ $0 }).map({
            RootDisk.cached(cacheRoot: Templates.cacheDirectory + "/oci/disks", key: $0.manifestDigest) != nil }) == true else {
            throw APIError(400, "image \(reference) has no root disk here yet, and the confined service runs no mkfs: "
                               + "make it with `kiln template create --image \(name)`")
        }
        while building.withLock({ b in defer { b = true }; return b }) { try await Task.sleep(nanoseconds: 200_000_000) }
        defer { building.withLock { $0 = false } }
        let root: RootImage
        do { root = try await RootImage.resolve(name, pull: RootImage.PullSettings()) } catch let e as DefaultImages.Failure {
            throw APIError(400, "template '\(name)': \(e.message)")
        }
        let c: Sandbox.Configuration
        do { c = try config(disk: root.disk) } catch { throw APIError(500, "\(error)") }
        let auto = Templates.autoName(for: c, withNetwork: network != nil)
        if Templates.usable(auto) { return Templates.path(auto) }
        try await makeTemplate(auto, c, network: network, imageConfig: root.runConfig)
        return Templates.path(auto)
    }
}
