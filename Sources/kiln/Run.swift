import AgentProtocol
import ArgumentParser
import CLinux
import Glibc
import Images
import LinuxSys
import KilnNet
import Sandbox
import Synchronization
import VMM

/// `kiln run`: a command in a new sandbox, its output streamed here, its exit code kiln's.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a new sandbox.",
        usage: """
            kiln run [options] [--] COMMAND [ARG...]
            kiln run --image REF [options] [-- COMMAND [ARG...]]
            """,
        discussion: """
            Starts a sandbox, runs COMMAND in it with stdout and stderr streamed to this terminal, exits with the \
            command's exit code (128+N when killed by signal N, 124 after --timeout) and removes the sandbox. With an \
            OCI image and no COMMAND, its Entrypoint and Cmd run; a COMMAND replaces both; its Env, WorkingDir and \
            User apply unless -e, -w, -u say otherwise.

            Without --template, kiln run starts from the automatic template of the image and kernel (in \
            /var/cache/kiln/templates) and makes it on first use: the first run boots, later runs restore the \
            snapshot in milliseconds. Ctrl-C (SIGINT), SIGTERM and SIGHUP are forwarded to the command.
            """)

    @OptionGroup var sandbox: SandboxOptions
    @Option(name: [.customShort("e"), .long], parsing: .unconditionalSingleValue,
            help: ArgumentHelp("Set an environment variable (repeatable; -e K copies K from here).", valueName: "K=V"))
    var env: [String] = []
    @Option(name: [.customShort("w"), .long], parsing: .unconditional,
            help: ArgumentHelp("Working directory in the guest (default /, or the image's WorkingDir).", valueName: "DIR"))
    var workdir: String?
    @Option(name: [.customShort("u"), .long], parsing: .unconditional,
            help: ArgumentHelp("Run as this user of the image's /etc/passwd, or a number (default root).", valueName: "USER[:GROUP]"))
    var user: String?
    @Option(name: [.customShort("v"), .long], parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        Mount the host directory HOST at GUEST over virtio-fs (repeatable, up to 4); with ro every write is refused \
        on the host. Files the guest creates belong to HOST's owner (docs/volumes.md).
        """, valueName: "HOST:GUEST[:ro]"))
    var volume: [String] = []
    @Flag(name: [.customShort("i"), .long], help: "Forward stdin to the command (without it the command's stdin is empty).")
    var interactive = false
    @Flag(name: [.customShort("t"), .long], help: "Run the command on a terminal (with -i: an interactive shell, `-it`).")
    var tty = false
    @Option(parsing: .unconditional, help: ArgumentHelp("Kill the command after this long (exit status 124).", valueName: "SECONDS"))
    var timeout: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "The most processes the command and its descendants may have at once in the guest (default 1024).", valueName: "N"))
    var pids: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        The most bytes the sandbox's console log keeps (default 1048576); when full it moves to console.log.1 and starts over.
        """, valueName: "BYTES"))
    var consoleLimit: String?
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "The command's open-files limit in the guest, soft and hard (default 1024 soft, 4096 hard).", valueName: "N"))
    var openFiles: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Limit each disk to BYTES_PER_S (and N requests a second), a token bucket of that size refilled every second, \
        BURST extra once (docs/net.md, "Rate limits"). K, M, G: KiB, MiB, GiB.
        """, valueName: "BYTES_PER_S[,ops=N][,burst=BYTES]"))
    var diskRate: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Limit what the sandbox receives and what it sends (a bucket each) to BYTES_PER_S (and N frames a second); needs --net.
        """, valueName: "BYTES_PER_S[,ops=N][,burst=BYTES]"))
    var netRate: String?
    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Start from template NAME (kiln template create) instead of booting; its image, kernel, memory and vCPUs are the template's.
        """, valueName: "NAME"))
    var template: String?
    @Flag(help: "Boot, even when a template for this image exists.")
    var noTemplate = false
    @Flag(help: "As root, run the VMM inside this process instead of jailed (debugging only; see docs/security.md).")
    var noJail = false
    @Flag(help: ArgumentHelp("""
        IPv4 egress through NAT in a network namespace of the sandbox's own (docs/net.md); without it (and without \
        --allow-out or --deny-out) the sandbox has no network device at all.
        """))
    var net = false
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        Reachable even when denied (repeatable; alone, without --net, only these are reachable). A DOMAIN or \
        *.DOMAIN (its subdomains) is matched on DNS, the HTTP Host and the TLS SNI (docs/net.md, "Domains").
        """, valueName: "CIDR|IP|DOMAIN"))
    var allowOut: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        Unreachable (repeatable). Always denied unless allowed: loopback, link-local (169.254.169.254), private ranges, \
        the host's addresses.
        """, valueName: "CIDR|IP"))
    var denyOut: [String] = []
    @Option(name: [.customShort("p"), .long], parsing: .unconditionalSingleValue, help: ArgumentHelp("""
        Forward 127.0.0.1:HOST on the host to port GUEST in the guest, over vsock (no network needed; repeatable).
        """, valueName: "HOST:GUEST"))
    var publish: [String] = []
    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The command and its arguments.", valueName: "COMMAND"))
    var command: [String] = []

    /// What the run does, from the options; usage errors throw before any work.
    func options() throws -> RunOptions {
        var o = RunOptions()
        o.image = sandbox.image
        o.kernel = sandbox.machine.kernel
        // Every value checked here, before any work (issue 14): the same checks as the service's.
        var settings = try sandbox.settings()
        if let timeout { settings.commandTimeout = try SandboxSettings.parseSeconds(timeout, .timeout) }
        if let pids { settings.pids = try SandboxSettings.parseInt(pids, .pids, in: SandboxSettings.pidsRange) }
        if let openFiles {
            settings.openFiles = try SandboxSettings.parseInt(openFiles, .openFiles, in: SandboxSettings.openFilesRange)
        }
        if let consoleLimit {
            settings.consoleLimit = try SandboxSettings.parseInt(consoleLimit, .consoleLimit, in: SandboxSettings.consoleLimitRange)
        }
        if let diskRate { o.limits.disk = try SandboxSettings.parseRate(diskRate, .diskRate) }
        if let netRate { o.limits.net = try SandboxSettings.parseRate(netRate, .netRate) }
        for entry in env {
            // `-e K` copies K from here: its name is checked as that of K=V.
            do { try SandboxSettings.checkEnvironment(entry.contains("=") ? entry : entry + "=") } catch {
                throw SettingError(.env, error.problem, got: entry)
            }
        }
        if let template { try SandboxSettings.checkTemplate(template) }
        try settings.validate()
        o.cpus = settings.cpus
        o.memory = settings.memoryMiB
        o.bootTimeout = settings.bootTimeout
        o.timeout = settings.commandTimeout
        o.pids = settings.pids
        o.consoleLimit = settings.consoleLimit
        o.openFiles = settings.openFiles
        o.environment = env
        o.workdir = workdir
        o.user = user
        o.pull = sandbox.pull
        o.rootDisk = sandbox.rootDisk
        o.imageConfig = sandbox.imageConfig
        o.interactive = interactive
        o.tty = tty
        o.template = template
        o.noTemplate = noTemplate
        o.noJail = noJail
        o.volumes = try volume.map { spec in
            guard let v = Volume.parse(spec) else { throw ValidationError("-v takes HOST:GUEST[:ro] with GUEST absolute, got '\(spec)'") }
            // Checked here, before any boot or restore (a first run would boot and save a template first).
            var st = stat()
            guard stat(v.host, &st) == 0 else { throw ValidationError("-v: cannot use \(v.host): \(String(cString: strerror(errno)))") }
            guard st.st_mode & S_IFMT == S_IFDIR else { throw ValidationError("-v: \(v.host) is not a directory (a volume shares a directory)") }
            return v
        }
        guard o.volumes.count <= Sandbox.defaultShareSlots else { throw ValidationError("at most \(Sandbox.defaultShareSlots) volumes (-v)") }
        o.net = net
        for text in allowOut {
            switch AllowEntry(text) {
            case .range(let r): o.allowOut.append(r)
            case .domain(let d): o.allowDomains.append(d)
            case nil: throw ValidationError("--allow-out needs an IPv4 address, a CIDR (A.B.C.D[/N]), a DOMAIN or *.DOMAIN, got '\(text)'")
            }
        }
        o.denyOut = try denyOut.map { text in
            if IPv4Range(text) == nil, DomainRule(text) != nil {
                throw ValidationError("--deny-out takes addresses and CIDRs only, not a domain ('\(text)'): allow the names you want with --allow-out")
            }
            return try Self.range(text, "--deny-out")
        }
        o.ports = try publish.map { text in
            guard let m = PortForward.Mapping.parse(text) else {
                throw ValidationError("--publish needs HOST:GUEST ports from 1 to 65535, got '\(text)'")
            }
            return m
        }
        if o.policy != nil && noJail { throw ValidationError("--net, --allow-out and --deny-out need the jailed VMM (not --no-jail)") }
        if !o.limits.net.isUnlimited && o.policy == nil { throw ValidationError("--net-rate limits the network device: it needs --net") }
        // Options end at the first COMMAND word or at `--`, which is not part of the command.
        // The passthrough capture also takes an unknown option before the command: that is a
        // usage error (or the help), not a command named `--frob`.
        if let first = command.first, first != "--", first.hasPrefix("-") {
            if first == "--help" || first == "-h" { throw CleanExit.helpRequest(self) }
            throw ValidationError("unknown option '\(first)' (options go before the COMMAND; kiln run --help)")
        }
        o.command = command.first == "--" ? Array(command.dropFirst()) : command
        guard !o.command.isEmpty || o.imageConfig != nil || o.template != nil || o.image.flatMap(RootImage.ociReference) != nil else {
            throw ValidationError("kiln run needs a command (kiln run [options] -- COMMAND [ARG...])")
        }
        guard o.command.allSatisfy({ !$0.utf8.contains(0) }) else { throw ValidationError("the command contains a NUL byte") }
        return o
    }

    static func range(_ text: String, _ option: String) throws(ValidationError) -> IPv4Range {
        guard let range = IPv4Range(text) else { throw ValidationError("\(option) needs an IPv4 address or CIDR (A.B.C.D[/N]), got '\(text)'") }
        return range
    }

    func validate() throws { _ = try options() }

    func run() async throws { Glibc.exit(await runCommand(try options())) }
}

/// What `kiln run` was asked to do, checked.
struct RunOptions {
    var image: String?
    var kernel: String?
    var cpus = 1
    var memory = 256
    var environment: [String] = []
    var workdir: String?
    var user: String?
    var pull = RootImage.PullSettings()
    var rootDisk: String?
    var imageConfig: String?
    var interactive = false
    var tty = false
    var timeout: Double = 0
    var pids: Int?
    var consoleLimit = Sandbox.defaultConsoleLimit
    var openFiles: Int?
    var limits = Sandbox.Limits()
    var bootTimeout: Double = 300
    var template: String?
    var noTemplate = false
    var noJail = false
    var volumes: [Volume] = []
    var net = false
    var allowOut: [IPv4Range] = []
    var allowDomains: [DomainRule] = []
    var denyOut: [IPv4Range] = []
    var ports: [PortForward.Mapping] = []
    var command: [String] = []

    /// The sandbox's egress policy, nil for no network at all.
    var policy: EgressPolicy? {
        net || !allowOut.isEmpty || !allowDomains.isEmpty || !denyOut.isEmpty
            ? EgressPolicy(internet: net, allow: allowOut, deny: denyOut, domains: allowDomains) : nil
    }
}

/// Signals kiln forwards to the command, handled on one thread with sigwait.
let forwardedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH]

func runCommand(_ options: RunOptions) async -> Int32 {

    // Every image boots through the agent disk, Kiln's own too: one boot path (docs/images.md).
    let kernel: String, image: String, agentDisk: String
    let command: ImageCommand
    var ociRunConfig: ImageConfiguration.RunConfig?
    do {
        kernel = try options.kernel ?? DefaultImages.kernel()
        agentDisk = try DefaultImages.agentDisk()
        if let disk = options.rootDisk {
            guard access(disk, R_OK) == 0 else { fail("cannot read root disk \(disk): \(String(cString: strerror(errno)))") }
            image = disk
        } else {
            let root = try await RootImage.resolve(options.image, pull: options.pull)
            image = root.disk
            ociRunConfig = root.runConfig
        }
        command = try ImageCommand(config: ociRunConfig ?? imageRunConfig(options), command: options.command, environment: commandEnvironment(options),
                                   workingDirectory: options.workdir, user: options.user)
    } catch let error as ImageCommand.Failure {
        fail(error.description, code: 2)
    } catch let error as DefaultImages.Failure {
        fail(error.message)
    } catch {
        fail("\(error)")
    }

    // Block the forwarded signals in every thread from here on; one thread takes them.
    var blocked = sigset_t()
    sigemptyset(&blocked)
    for s in forwardedSignals { sigaddset(&blocked, s) }
    pthread_sigmask(SIG_BLOCK, &blocked, nil)
    let relay = SignalRelay()
    let waitSet = blocked
    _ = try? LinuxSys.Thread.spawn(name: "kiln-signals") {
        var set = waitSet
        while true {
            var signo: Int32 = 0
            if sigwait(&set, &signo) == 0 { relay.deliver(signo) }
        }
    }

    var config = Sandbox.Configuration(kernelPath: kernel, imagePath: image)
    config.agentDisk = agentDisk
    config.cpus = options.cpus
    config.memoryMiB = options.memory
    config.bootTimeout = options.bootTimeout
    config.consoleLimit = options.consoleLimit
    config.limits = options.limits
    config.volumes = options.volumes
    // The jailed VMM gets its seccomp mode in its launch configuration, not from the environment.
    config.seccomp = seccompMode(disabled: false)
    if options.noJail {
        config.isolation = .inProcess
        if geteuid() == 0 { writeRaw(2, "kiln: warning: --no-jail: the VMM runs as root inside this process, with no jail (debugging only)\n") }
    }
    if let policy = options.policy {
        do { config.network = try await makeNetwork(policy) } catch { fail("\(error)") }
    }
    let sandbox: Sandbox
    do {
        sandbox = try await startSandbox(config, options)
    } catch {
        fail("\(error)")
    }
    // Bound now: once kiln confines itself it may only accept on them.
    var forwards: [PortForward] = []
    for mapping in options.ports {
        do { forwards.append(try PortForward(mapping, sandbox: sandbox)) } catch {
            sandbox.stop()
            fail("\(error)")
        }
    }
    if relay.interruptedBeforeStart {
        sandbox.stop()
        return 130
    }
    relay.sandbox(sandbox)
    if sandbox.vmmProcess != nil {
        // The VMM runs jailed in its own process: from here on kiln only relays and cleans up,
        // and every thread of it is held to that (docs/security.md, "Seccomp").
        do { try confineSupervisor(disabled: false) } catch {
            sandbox.stop()
            fail("\(error)")
        }
    }

    let terminal = options.tty && isatty(0) != 0 ? RawTerminal.enter(fd: 0) : nil
    var size = winsize()
    let window = options.tty ? (ioctl(1, UInt(TIOCGWINSZ), &size) == 0 && size.ws_row > 0
                                ? WindowSize(rows: size.ws_row, columns: size.ws_col) : WindowSize(rows: 24, columns: 80)) : nil
    let process: RemoteProcess
    do {
        let exec = try await command.exec(through: sandbox.agent, pty: window,
                                          timeoutMillis: UInt32(min(options.timeout * 1000, Double(UInt32.max))))
        // Spawn (1.3) only when a limit was asked for: Exec gets the agent's default.
        if options.pids != nil || options.openFiles != nil {
            let limits = Limits(pids: UInt32(options.pids ?? 0), openFiles: UInt32(options.openFiles ?? 0))
            process = try await sandbox.agent.exec(exec, keep: false, limits: limits)
        } else {
            process = try await sandbox.agent.exec(exec)
        }
    } catch let error as ImageCommand.Failure {
        terminal?.restore()
        sandbox.stop()
        fail(error.description)
    } catch {
        terminal?.restore()
        sandbox.stop()
        if case AgentClientError.failed(let failure) = error {
            writeRaw(2, "kiln: \(failure.message)\n")
            return failure.errno == ENOENT ? 127 : 126
        }
        fail("\(error)")
    }
    relay.process(process)
    BootTrace.mark("command-started")
    if options.timeout > 0 { hostDeadline(after: options.timeout, sandbox: sandbox, terminal: terminal) }

    if options.interactive {
        let input = StdinPump(process: process)
        input.start()
    } else {
        process.closeStdin()
    }

    for await chunk in process.output {
        switch chunk {
        case .stdout(let bytes): writeAll(1, bytes)
        case .stderr(let bytes): writeAll(2, bytes)
        }
    }
    let status: AgentProtocol.ExitStatus
    do { status = try await process.wait() } catch {
        // The host's deadline stopped the VM (hostDeadline): that thread reports it and exits 124.
        if hostDeadlinePassed.load(ordering: .acquiring) { while true { usleep(100_000) } }
        terminal?.restore()
        // The agent's connection ends with the VMM: give the thread that waits for it a moment
        // to say how it ended (killed, out of memory), which is what the user needs to hear.
        var ended = sandbox.ended
        for _ in 0..<20 where ended == nil {
            usleep(50_000)
            ended = sandbox.ended
        }
        let tail = sandbox.consoleTail()
        sandbox.stop()
        let why = ended.map { "the sandbox's VM ended while the command ran: \(Sandbox.describe($0))" } ?? "lost the sandbox's agent: \(error)"
        fail(why + (tail.isEmpty ? "" : "; last console lines:\n\(tail)"))
    }
    BootTrace.mark("command-exited")
    for forward in forwards { forward.stop() }
    terminal?.restore()
    sandbox.stop()
    BootTrace.mark("sandbox-removed")
    if status.timedOut {
        writeRaw(2, "kiln: the command timed out after \(formatSeconds(options.timeout)) s and was killed\n")
        return 124
    }
    switch status.termination {
    case .exited(let code): return code
    case .signaled(let signal): return 128 + signal
    }
}

/// The host's own deadline for `--timeout`: the agent kills the command when it passes, but a
/// guest that no longer answers (a fork bomb, a wedged kernel) cannot. A grace period after the
/// timeout, the host ends the VM itself and exits 124, saying so.
let hostDeadlinePassed = Atomic<Bool>(false)

func hostDeadline(after seconds: Double, sandbox: Sandbox, terminal: RawTerminal?) {
    let grace = 10.0
    _ = try? LinuxSys.Thread.spawn(name: "kiln-deadline") {
        var left = seconds + grace
        while left > 0 {
            let step = min(left, 1.0)
            usleep(UInt32(step * 1_000_000))
            left -= step
        }
        hostDeadlinePassed.store(true, ordering: .releasing)
        terminal?.restore()
        writeRaw(2, "kiln: the command timed out after \(formatSeconds(seconds)) s and the guest did not respond "
                    + "within \(Int(grace)) s more: the VM was stopped\n")
        _ = sandbox.stop()
        exit(124)
    }
}

/// A sandbox from the chosen template, the automatic one, or a boot.
func startSandbox(_ config: Sandbox.Configuration, _ options: RunOptions) async throws -> Sandbox {
    if let name = options.template {
        if let problem = Templates.problem(name, hostProfile: config.hostProfile) {
            throw SandboxError.setup("\(problem) (kiln template create \(name))")
        }
        return try await Sandbox.restore(snapshot: Templates.path(name), hostProfile: config.hostProfile, isolation: config.isolation,
                                           seccomp: config.seccomp, volumes: config.volumes, network: config.network,
                                           consoleLimit: config.consoleLimit, limits: config.limits)
    }
    if options.noTemplate { return try await Sandbox.start(config) }
    let auto = Templates.autoName(for: config)
    if Templates.usable(auto, hostProfile: config.hostProfile) {
        do { return try await Sandbox.restore(snapshot: Templates.path(auto), hostProfile: config.hostProfile, isolation: config.isolation,
                                           seccomp: config.seccomp, volumes: config.volumes, network: config.network,
                                           consoleLimit: config.consoleLimit, limits: config.limits) } catch {
            writeRaw(2, "kiln: the template for this image did not start (\(error)); booting instead\n")
            var config = config
            // The failed restore gave its network up: a boot gets a new one.
            if let old = config.network { config.network = try await makeNetwork(old.policy) }
            return try await Sandbox.start(config)
        }
    }
    var parent = Templates.cacheDirectory
    while access(parent, F_OK) != 0, let slash = parent.lastIndex(of: "/"), slash != parent.startIndex { parent = String(parent[..<slash]) }
    guard access(parent, W_OK) == 0 else { return try await Sandbox.start(config) }
    writeRaw(2, "kiln: first run with this image and kernel: booting, then saving a template so that later runs start in milliseconds...\n")
    let made = try await Templates.bootForTemplate(auto, config: config)
    // Another `kiln run` of this image may have saved the same template meanwhile: it stays (a
    // restore of it may be under way), and this one is dropped.
    do { try Templates.save(made, as: auto, keepingUsable: config.hostProfile) } catch {
        // The boot was paid for and its sandbox works: a cache that cannot take the template (a
        // full disk) costs later runs a boot each, not this run its command.
        writeRaw(2, "kiln: warning: could not save the template (\(error)); running without it\n")
        guard !config.volumes.isEmpty else { return made }
        // Volumes bind to a clone of the template; without one, a boot that mounts them.
        made.stop()
        var config = config
        if let old = config.network { config.network = try await makeNetwork(old.policy) }
        return try await Sandbox.start(config)
    }
    guard !config.volumes.isEmpty else { return made }
    // The template's sandbox has only spare slots: a clone of it binds the volumes (docs/volumes.md).
    made.stop()
    // The stopped sandbox took its network with it: the clone gets a new one.
    var network: SandboxNetwork?
    if let old = config.network { network = try await makeNetwork(old.policy) }
    return try await Sandbox.restore(snapshot: Templates.path(auto), hostProfile: config.hostProfile, isolation: config.isolation,
                                     seccomp: config.seccomp, volumes: config.volumes, network: network,
                                     consoleLimit: config.consoleLimit, limits: config.limits)
}

/// A sandbox network (docs/net.md), set up on a thread of its own: it runs `ip` and `nft`.
func makeNetwork(_ policy: EgressPolicy) async throws(NetworkError) -> SandboxNetwork {
    let result: Result<SandboxNetwork, NetworkError> = await LinuxSys.Thread.run(name: "kiln-net") {
        Result { () throws(NetworkError) -> SandboxNetwork in
            try SandboxNetwork.create(policy: policy, runtimeBase: Sandbox.defaultRuntimeDirectory)
        }
    }
    return try result.get()
}

/// The run config the command gets: from --image-config, else the one the template was made
/// with; nil for Kiln's own images.
func imageRunConfig(_ options: RunOptions) throws -> ImageConfiguration.RunConfig? {
    if let file = options.imageConfig {
        guard let bytes = SmallFile.read(file, limit: 16 << 20) else { throw DefaultImages.Failure(message: "cannot read image config \(file)") }
        do { return try ImageConfiguration.RunConfig.decode(json: bytes) } catch {
            throw DefaultImages.Failure(message: "image config \(file) is not an OCI image configuration: \(error)")
        }
    }
    if let name = options.template { return try Templates.imageConfig(name) }
    return nil
}

/// What the user set for the command's environment (ImageCommand adds PATH and HOME when
/// neither the image nor the user set them).
func commandEnvironment(_ options: RunOptions) -> [String] {
    var env: [(String, String)] = []
    if options.tty { env.append(("TERM", DefaultImages.env("TERM") ?? "xterm")) }
    for item in options.environment {
        let name: String, value: String
        if let eq = item.firstIndex(of: "=") {
            name = String(item[..<eq]); value = String(item[item.index(after: eq)...])
        } else {
            guard let v = DefaultImages.env(item) else { continue }
            name = item; value = v
        }
        env.removeAll { $0.0 == name }
        env.append((name, value))
    }
    return env.map { "\($0.0)=\($0.1)" }
}

func formatSeconds(_ s: Double) -> String { s == s.rounded() ? String(Int(s)) : String(s) }

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
        if n < 0 { if errno == EINTR { continue } else { return } }
        offset += n
    }
}

/// Hands signals to the running command, or cancels a sandbox that is still starting.
final class SignalRelay: Sendable {
    private let state = Mutex<(sandbox: Sandbox?, process: RemoteProcess?, interrupted: Bool)>((nil, nil, false))

    var interruptedBeforeStart: Bool { state.withLock { $0.interrupted } }
    func sandbox(_ s: Sandbox) { state.withLock { $0.sandbox = s } }
    func process(_ p: RemoteProcess) { state.withLock { $0.process = p } }

    func deliver(_ signo: Int32) {
        let (process, _) = state.withLock { s in
            if s.process == nil && signo != SIGWINCH { s.interrupted = true }
            return (s.process, s.sandbox)
        }
        if let process {
            if signo == SIGWINCH {
                var size = winsize()
                if ioctl(1, UInt(TIOCGWINSZ), &size) == 0 { process.resize(rows: size.ws_row, columns: size.ws_col) }
            } else {
                process.signal(signo)
            }
        }
    }
}

/// Copies kiln's stdin to the command's, on a thread of its own (reads block).
final class StdinPump: Sendable {
    let process: RemoteProcess
    init(process: RemoteProcess) { self.process = process }

    func start() {
        let (chunks, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingOldest(4))
        _ = try? LinuxSys.Thread.spawn(name: "kiln-stdin") {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                // Back-pressure: wait while the writer is behind, instead of buffering without end.
                while case .dropped = continuation.yield(Array(buffer[0..<n])) { usleep(1000) }
            }
            continuation.finish()
        }
        let process = self.process
        Task {
            for await chunk in chunks { try? await process.write(chunk) }
            process.closeStdin()
        }
    }
}
