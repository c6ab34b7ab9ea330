import AgentProtocol
import Devices
import Glibc
import Jailer
import LinuxSys
import KilnNet
import Synchronization
import Seccomp
import VMM
import VMMProtocol

/// Why a sandbox could not be started.
public enum SandboxError: Error, CustomStringConvertible, Sendable {
    case setup(String)
    /// A value of the configuration is out of range or names the wrong kind of file.
    case invalid(SettingError)
    /// The VM ended before its agent answered; the console's last lines say why.
    case vmStopped(String, console: String)
    /// The agent did not answer within the boot timeout.
    case agentTimeout(seconds: Double, console: String)
    case agent(AgentClientError)
    /// A detached sandbox's VMM no longer runs (`adopt`); what it left was removed.
    case vmGone(directory: String)
    /// `directory` holds no sandbox record, or one that cannot be read.
    case notAdoptable(directory: String, why: String)

    public var description: String {
        switch self {
        case .setup(let why): why
        case .invalid(let error): error.description
        case .vmStopped(let why, let console): "the sandbox VM stopped before its agent came up: \(why)" + Self.tail(console)
        case .agentTimeout(let s, let console):
            "the sandbox's agent did not come up within \(Int(s)) s" + Self.tail(console)
        case .agent(let e): "cannot talk to the sandbox's agent: \(e)"
        case .vmGone(let dir): "the sandbox in \(dir) is gone: its VMM no longer runs (its leftovers were removed)"
        case .notAdoptable(let dir, let why): "cannot adopt the sandbox in \(dir): \(why)"
        }
    }

    static func tail(_ console: String) -> String {
        console.isEmpty ? " (the console printed nothing)" : "; last console lines:\n" + console
    }
}

/// One sandbox: a VM booted from a root filesystem image whose PID 1 is kiln-agent, with the
/// agent session open. The image is attached with a private write layer, so nothing the
/// sandbox writes reaches it. `stop()` ends the VM and removes everything the sandbox created.
public final class Sandbox: Sendable {
    public struct Configuration: Sendable {
        public var kernelPath: String
        public var imagePath: String
        public var cpus: Int = 1
        public var memoryMiB: Int = 256
        public var hostProfile: HostProfile = .detect()
        /// Seconds to wait for the agent after the VM starts.
        public var bootTimeout: Double = 300
        /// Where the sandbox's socket and console log live while it runs (a new directory inside).
        public var runtimeDirectory: String = Sandbox.defaultRuntimeDirectory
        /// Kernel parameters added to Kiln's.
        public var kernelArguments: [String] = []
        /// Jailed VMM process (the default as root) or a VMM thread in this process.
        public var isolation: Isolation = .automatic
        /// Whether the VMM dies with this process (the default) or outlives it (`.detached`,
        /// jailed only), to be taken over with `Sandbox.adopt(directory:)`.
        public var lifetime: Lifetime = .tiedToProcess
        /// The VMM's seccomp filters (`.kill`; the others are for debugging).
        public var seccomp: SeccompMode = .kill
        /// Kiln's agent disk (rootfs/build-agent-disk.sh). Set, the guest boots from it (read-only,
        /// /dev/vdb) and its agent, as PID 1, mounts the image (/dev/vda, read-write over the
        /// private write layer) and pivots into it: any ext4 image boots, with no Kiln file in it
        /// (docs/images.md, "Booting an image"). Nil, the image's own /sbin/kiln-agent is init.
        public var agentDisk: String?
        /// Host directories mounted in the guest once the agent is up (docs/volumes.md).
        public var volumes: [Volume] = []
        /// Spare virtio-fs slots the VM carries (kiln0...), so that its templates can take volumes
        /// when restored; volumes bind the first ones.
        public var shareSlots: Int = Sandbox.defaultShareSlots
        /// The sandbox's network (docs/net.md): the VM gets a virtio-net device on the network's
        /// TAP and the guest side of its addresses; nil, no network device at all. Jailed only.
        public var network: SandboxNetwork?
        /// The most bytes the console log keeps (console.log in the runtime directory): when full
        /// it moves to console.log.1 and starts over, so at most twice this is on the host and the
        /// newest output is in console.log (`consoleTail` reads both).
        public var consoleLimit: Int = Sandbox.defaultConsoleLimit
        /// Rate limits (docs/net.md, "Rate limits"): every disk's (each its own buckets), and each
        /// direction of the network device's.
        public var limits = Limits()

        public init(kernelPath: String, imagePath: String) {
            self.kernelPath = kernelPath
            self.imagePath = imagePath
        }
    }

    /// A sandbox's rate limits: `--disk-rate` and `--net-rate` (a NIC's limit applies to receive
    /// and transmit, a bucket each).
    public struct Limits: Sendable, Equatable {
        public var disk: RateLimit = .unlimited
        public var net: RateLimit = .unlimited
        public init(disk: RateLimit = .unlimited, net: RateLimit = .unlimited) { self.disk = disk; self.net = net }
    }

    public static let defaultShareSlots = 4
    /// 1 MiB: a guest that spams its console costs the host at most 2 MiB (console.log and .1).
    public static let defaultConsoleLimit = 1 << 20

    /// The guest port the agent listens on (docs/agent-protocol.md).
    public static let agentPort = 1024
    public static let baseCmdline = "console=ttyS0 reboot=k panic=-1 quiet"
    /// The image's own agent is init.
    public static let imageInitCmdline = "root=/dev/vda rw rootfstype=ext4 init=/sbin/kiln-agent"
    /// The agent disk's agent is init and enters the image (Sources/Agent/ImageRoot.swift).
    public static let agentDiskCmdline = "root=/dev/vdb ro rootfstype=ext4 init=/sbin/kiln-agent kiln.root=/dev/vda kiln.rootfstype=ext4"

    static func cmdline(_ config: Configuration) -> String {
        ([baseCmdline, config.agentDisk == nil ? imageInitCmdline : agentDiskCmdline]
            + (config.network == nil ? [] : [SandboxNetwork.kernelParameter]) + config.kernelArguments)
            .joined(separator: " ")
    }

    public let agent: AgentClient
    public let directory: String
    let host: any VMHost
    let consoleFD: Int32
    let stopped = Mutex(false)
    let idle: IdleParking

    public static var defaultRuntimeDirectory: String {
        if let p = getenv("KILN_RUNTIME_DIR"), p.pointee != 0 { return String(cString: p) }
        return getuid() == 0 ? "/run/kiln" : "/tmp/kiln-\(getuid())"
    }

    var consolePath: String { directory + "/console.log" }
    var socketPath: String { directory + "/vsock.sock" }

    init(agent: AgentClient, directory: String, host: any VMHost, consoleFD: Int32) {
        self.agent = agent; self.directory = directory; self.host = host; self.consoleFD = consoleFD
        let idle = IdleParking(host: host)
        self.idle = idle
        agent.setSendHook { idle.willSend($0) }
    }

    /// Boots the VM and waits until its agent has answered the handshake.
    public static func start(_ config: Configuration) async throws(SandboxError) -> Sandbox {
        // A program using the library gets the CLI's checks too: no trap, no half-made VM.
        do throws(SettingError) { try config.settings.validate() } catch { throw .invalid(error) }
        guard access(config.imagePath, R_OK) == 0 else {
            throw .setup("cannot read image \(config.imagePath): \(String(cString: strerror(errno)))")
        }
        try checkLifetime(config.lifetime, config.isolation)
        if config.network != nil && !config.isolation.jails { throw .setup("a sandbox network needs the jailed VMM (run as root, without --no-jail)") }
        let (directory, console) = try prepare(config.runtimeDirectory, lifetime: config.lifetime)
        if let disk = config.agentDisk, access(disk, R_OK) != 0 {
            cleanUp(directory, console)
            throw .setup("cannot read the agent disk \(disk): \(String(cString: strerror(errno)))")
        }
        let vsockPath = directory + "/vsock.sock"
        var machineConfig = MachineConfig(kernelPath: config.kernelPath, initrdPath: nil, cmdline: cmdline(config),
                                          cpus: config.cpus, memoryMiB: config.memoryMiB, hostProfile: config.hostProfile,
                                          consoleInput: nil, consoleOutput: console)
        machineConfig.consoleLimit = UInt64(config.consoleLimit)
        // The image is vda whatever boots it, so that kiln.root names the same disk on both paths.
        machineConfig.disks = [MachineConfig.Disk(path: config.imagePath, overlay: true, limit: config.limits.disk)]
        if let disk = config.agentDisk { machineConfig.disks.append(MachineConfig.Disk(path: disk, readOnly: true, limit: config.limits.disk)) }
        machineConfig.vsock = MachineConfig.Vsock(path: vsockPath)
        if let network = config.network {
            machineConfig.net = NetSpec(tap: SandboxNetwork.tapName, netns: network.namespacePath)
            machineConfig.net?.rxLimit = config.limits.net
            machineConfig.net?.txLimit = config.limits.net
        } else if !config.limits.net.isUnlimited {
            cleanUp(directory, console)
            throw .setup("--net-rate limits the network device: the sandbox has none (kiln run --net)")
        }
        machineConfig.seccomp = config.seccomp
        let host: any VMHost
        do throws(SandboxError) {
            machineConfig.shares = try shares(slots: config.shareSlots, volumes: config.volumes)
            if config.isolation.jails {
                let launch = VMMLaunch(machine: .boot(machineConfig.launch), seccomp: config.seccomp.rawValue, headless: true,
                                       consoleLimit: machineConfig.consoleLimit)
                let largestDisk = machineConfig.disks.map { fileSize($0.path) }.max() ?? 0
                host = try JailedVM(launch, cpus: config.cpus, memoryMiB: config.memoryMiB, largestDisk: largestDisk,
                                    directory: directory, console: console, lifetime: config.lifetime)
            } else {
                let rotation = try openConsoleRotation(directory)
                machineConfig.consoleRotation = rotation
                // The machine keeps a descriptor of its own.
                defer { Glibc.close(rotation) }
                let machine: Machine
                do { machine = try Machine(machineConfig) } catch { throw .setup(error.description) }
                host = try InProcessVM(machine)
            }
        } catch {
            cleanUp(directory, console)
            config.network?.close()
            throw error
        }
        let sandbox: Sandbox
        do throws(SandboxError) { sandbox = try await launch(host, directory: directory, console: console, timeout: config.bootTimeout) } catch {
            config.network?.close()
            throw error
        }
        if let network = config.network {
            // The VMM has the TAP open: it keeps the namespace from here on (SandboxNetwork).
            network.detachName()
            // The resolver is the gateway, the same in every sandbox: a template keeps the file.
            do { _ = try await sandbox.agent.writeFile("/etc/resolv.conf", contents: Array(SandboxNetwork.resolvConf.utf8)) } catch {
                sandbox.stop()
                throw .agent(error as? AgentClientError ?? .connection("\(error)"))
            }
        }
        if !config.volumes.isEmpty {
            do { try await sandbox.mount(config.volumes) } catch { sandbox.stop(); throw error }
        }
        return sandbox
    }

    /// Starts a sandbox from a snapshot (a template): the guest continues where the snapshot left
    /// it, with its own socket, write layer and copy-on-write memory; its clock is set to this
    /// host's and its random number generator reseeded, so that clones do not share streams.
    /// `lifetime: .detached` makes a sandbox that outlives this process (see `Lifetime`).
    public static func restore(snapshot: String, runtimeDirectory: String = Sandbox.defaultRuntimeDirectory,
                               hostProfile: HostProfile = .detect(), isolation: Isolation = .automatic,
                               lifetime: Lifetime = .tiedToProcess, seccomp: SeccompMode = .kill,
                               timeout: Double = 60, volumes: [Volume] = [], network: SandboxNetwork? = nil,
                               consoleLimit: Int = Sandbox.defaultConsoleLimit,
                               limits: Limits? = nil) async throws(SandboxError) -> Sandbox {
        do throws(SettingError) { try SandboxSettings.check(consoleLimit, .consoleLimit, in: SandboxSettings.consoleLimitRange) } catch {
            throw .invalid(error)
        }
        try checkLifetime(lifetime, isolation)
        // A snapshot with a net device (a template made with a network) gets this network's TAP;
        // without a network it cannot be restored (its TAP would be opened on the host).
        var net: NetSpec?
        if let saved = (try? SnapshotInfo.read(directory: snapshot))?.config.net {
            guard let network else {
                throw .setup("snapshot \(snapshot) has a network device: restore it with a network (kiln run --net)")
            }
            guard isolation.jails else { throw .setup("a sandbox network needs the jailed VMM (run as root, without --no-jail)") }
            net = NetSpec(tap: SandboxNetwork.tapName, mac: saved.mac, netns: network.namespacePath)
        } else if network != nil {
            throw .setup("snapshot \(snapshot) has no network device: a network needs a template made with one")
        }
        if let limits, !limits.net.isUnlimited, net == nil {
            throw .setup("--net-rate limits the network device: the sandbox has none (kiln run --net)")
        }
        let (directory, console) = try prepare(runtimeDirectory, lifetime: lifetime)
        let vsockPath = directory + "/vsock.sock"
        var overrides = RestoreOverrides(vsockPath: vsockPath, consoleInput: nil, consoleOutput: console, hostProfile: hostProfile)
        overrides.net = net
        // nil keeps the template's limits; a clone given limits gets exactly those.
        if let limits {
            overrides.diskLimit = limits.disk
            if net != nil { overrides.netRxLimit = limits.net; overrides.netTxLimit = limits.net }
        }
        overrides.seccomp = seccomp
        overrides.consoleLimit = UInt64(consoleLimit)
        let host: any VMHost
        do throws(SandboxError) {
            overrides.shares = try restoredShares(volumes)
            if isolation.jails {
                // Checked here too, for the jail's limits: the memory size and the disks' sizes.
                let info: SnapshotInfo
                do { info = try SnapshotInfo.read(directory: snapshot); try info.checkMemoryFile(in: snapshot) } catch { throw .setup(error.description) }
                guard info.hostProfile == hostProfile else {
                    throw .setup("snapshot \(snapshot) was made on a host with profile \(info.hostProfile.rawValue); this host is \(hostProfile.rawValue)")
                }
                let launch = VMMLaunch(machine: .restore(overrides.launch(snapshot: snapshot)), seccomp: seccomp.rawValue, headless: true,
                                       consoleLimit: overrides.consoleLimit)
                host = try JailedVM(launch, cpus: info.vcpus, memoryMiB: Int(info.memoryBytes >> 20),
                                    largestDisk: info.config.disks.map { fileSize($0.path) }.max() ?? 0,
                                    directory: directory, console: console, lifetime: lifetime)
            } else {
                let rotation = try openConsoleRotation(directory)
                overrides.consoleRotation = rotation
                defer { Glibc.close(rotation) }
                let machine: Machine
                do { machine = try Machine(restoring: snapshot, overrides: overrides) } catch { throw .setup(error.description) }
                host = try InProcessVM(machine)
            }
        } catch {
            cleanUp(directory, console)
            network?.close()
            throw error
        }
        let sandbox: Sandbox
        do throws(SandboxError) {
            sandbox = try await resumeAgent(host, directory: directory, console: console, timeout: timeout,
                                            session: AgentSession.read(snapshot: snapshot))
        } catch {
            network?.close()
            throw error
        }
        network?.detachName()
        do {
            var entropy = [UInt8](repeating: 0, count: 64)
            var rng = SystemRandomNumberGenerator()
            for i in entropy.indices { entropy[i] = UInt8.random(in: 0...255, using: &rng) }
            let e = try await sandbox.agent.setTimeAndReseed(entropy)
            if e != 0 { throw AgentClientError.failed(Failure(errno: e, message: "the guest refused new entropy: errno \(e)")) }
        } catch {
            sandbox.stop()
            throw .agent(error as? AgentClientError ?? .connection("\(error)"))
        }
        if !volumes.isEmpty {
            do { try await sandbox.mount(volumes) } catch { sandbox.stop(); throw error }
        }
        BootTrace.mark("sandbox-restored")
        return sandbox
    }

    /// Snapshots the running sandbox into `directory` (the VM pauses for the duration). When the
    /// agent session stands at a frame boundary with no stream open (as after a Ping answered,
    /// which `Templates.create` sends), the snapshot records it (`AgentSession`), and sandboxes
    /// restored from it attach to the guest's kept connection instead of connecting anew.
    public func snapshot(to directory: String) throws(SandboxError) {
        let mark = agent.idleMark()
        try host.snapshot(to: directory)
        unlink(directory + "/" + AgentSession.file)
        if let mark, agent.idleMark() == mark { _ = agent.session.write(snapshot: directory) }
    }

    static func prepare(_ base: String, lifetime: Lifetime) throws(SandboxError) -> (directory: String, console: Int32) {
        let directory = try makeDirectory(base, lifetime: lifetime)
        // Read and written: a full log is copied to console.log.1 from this descriptor (Console).
        let console = Glibc.open(directory + "/console.log", O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard console >= 0 else { Files.removeFlatDirectory(directory); throw .setup("cannot create the console log in \(directory)") }
        return (directory, console)
    }

    /// The console log's rotation file, console.log.1 (empty until the log first fills), appended
    /// to like the log: the VMM empties it, then writes the full log's content into it.
    static func openConsoleRotation(_ directory: String) throws(SandboxError) -> Int32 {
        let fd = Glibc.open(directory + "/" + consoleRotationName, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .setup("cannot create the console log's rotation file in \(directory): \(String(cString: strerror(errno)))") }
        return fd
    }

    static let consoleRotationName = "console.log.1"

    static func cleanUp(_ directory: String, _ console: Int32) {
        if console >= 0 { Glibc.close(console) }
        Files.removeFlatDirectory(directory)
    }

    /// Waits for the agent of the VM `host` runs to answer the handshake. The wait blocks, so it
    /// runs on a thread of its own: on the cooperative pool, a caller whose other tasks hold both
    /// threads would see the deadline pass with the agent long ready.
    static func launch(_ host: any VMHost, directory: String, console: Int32, timeout: Double) async throws(SandboxError) -> Sandbox {
        let result: Result<Sandbox, SandboxError> = await Thread.run(name: "kiln-agent-wait") {
            Result { () throws(SandboxError) -> Sandbox in try waitForAgent(host, directory: directory, console: console, timeout: timeout) }
        }
        return try result.get()
    }

    static func waitForAgent(_ host: any VMHost, directory: String, console: Int32, timeout: Double) throws(SandboxError) -> Sandbox {
        func abandon() {
            host.stop()
            cleanUp(directory, console)
        }
        let deadline = monotonicSeconds() + timeout
        var pause: UInt64 = 2_000_000
        while true {
            if let ended = host.ended {
                let tail = consoleTail(directory + "/console.log")
                abandon()
                throw .vmStopped(describe(ended), console: tail)
            }
            if monotonicSeconds() > deadline {
                let tail = consoleTail(directory + "/console.log")
                abandon()
                throw .agentTimeout(seconds: timeout, console: tail)
            }
            // A loaded host's emulated guest can take seconds to answer a connection: wait for it
            // (up to the deadline) rather than drop it and start over.
            let wait = min(30, max(1, deadline - monotonicSeconds()))
            if let socket = connectToGuest(directory + "/vsock.sock", port: agentPort, timeout: wait) {
                do {
                    let client = try AgentClient(socket: socket, software: "kiln")
                    BootTrace.mark("agent-ready")
                    return Sandbox(agent: client, directory: directory, host: host, consoleFD: console)
                } catch {
                    if case .connection = error {} else { abandon(); throw .agent(error) }
                }
            }
            // Quick at first (a restored guest answers at once), then every 100 ms (a booting one).
            var nap = timespec(tv_sec: 0, tv_nsec: Int(pause))
            nanosleep(&nap, nil)
            pause = min(pause * 2, 100_000_000)
        }
    }

    /// Ends the VM (if still running) and removes the sandbox's files. Returns how the VM ended.
    @discardableResult
    public func stop() -> MachineOutcome {
        let first = stopped.withLock { s in defer { s = true }; return !s }
        if first {
            idle.end()
            IdleReaper.shared.forget(self)
            agent.close()
            host.stop()
            Sandbox.cleanUp(directory, consoleFD)
        }
        return host.ended ?? .userQuit
    }

    /// Whether the VM has ended on its own (guest shutdown, panic, failure).
    public var ended: MachineOutcome? { host.ended }

    /// The jailed VMM's process id and jail directory (nil when the VMM runs in this process).
    public var vmmProcess: (pid: pid_t, jail: String)? { host.vmmProcess }

    /// The last lines the guest printed on its console.
    public func consoleTail(lines: Int = 20) -> String { Sandbox.consoleTail(consolePath, lines: lines) }

    /// A second raw connection to the agent (for tests of the agent's robustness).
    public static func connectToGuestForTests(_ sandbox: Sandbox) -> FileDescriptor? {
        connectToGuest(sandbox.socketPath, port: agentPort)
    }

    // MARK: Helpers

    /// A host-initiated vsock connection (docs/vsock.md): nil when nothing listens on `port` yet.
    static func connectToGuest(_ path: String, port: Int, timeout seconds: Double = 5) -> FileDescriptor? {
        guard let fd = try? UnixSocket.connect(path: path) else { return nil }
        _ = fcntl(fd.raw, F_SETFL, fcntl(fd.raw, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1e6))
        _ = setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("CONNECT \(port)\n".utf8)
        guard request.withUnsafeBytes({ Glibc.send(fd.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 64 {
            let n = Glibc.read(fd.raw, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n != 1 { return nil }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        guard line.starts(with: Array("OK ".utf8)) else { return nil }
        timeout = timeval(tv_sec: 0, tv_usec: 0)
        _ = setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// How a VM ended, in words for a message.
    public static func describe(_ outcome: MachineOutcome) -> String {
        switch outcome {
        case .guestShutdown: "the guest shut down"
        case .guestPanicked: "the guest kernel panicked"
        case .userQuit: "stopped"
        case .failed(let why): why
        }
    }

    static let counterLock = Mutex(0)

    static func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
    }

    /// Removes the runtime directories of sandboxes whose process is gone (killed with SIGKILL,
    /// which leaves no chance to clean up). A directory is `sandbox-<pid>-...`; a detached
    /// sandbox's (it holds a record) lives as long as its VMM instead (`sweepDead`).
    static func sweep(_ base: String) { sweepDead(in: base) }

    /// A new runtime directory: `sandbox-<pid>-<n>-<random>`, or `sandbox-d<pid>-...` for a
    /// detached sandbox, a name that no sweep keyed on the creator's pid alone matches
    /// (Supervisor.isStale), so that older Kiln builds on the host leave it to its VMM's life.
    static func makeDirectory(_ base: String, lifetime: Lifetime) throws(SandboxError) -> String {
        Files.makeDirectories(base)
        sweep(base)
        let n = counterLock.withLock { c in c += 1; return c }
        let random = UInt32.random(in: 0...UInt32.max)
        let dir = "\(base)/sandbox-\(lifetime == .detached ? "d" : "")\(getpid())-\(n)-\(String(random, radix: 16))"
        guard mkdir(dir, 0o700) == 0 else { throw .setup("cannot create \(dir): \(String(cString: strerror(errno)))") }
        return dir
    }


    /// The last `lines` lines of the console log at `path`, continued from its rotation file
    /// (`path`.1) when the log started over too recently to hold them. The guest wrote them:
    /// carriage returns are dropped and other control characters (a terminal's escape sequences)
    /// shown as '?', so that an error message quoting them cannot drive the user's terminal.
    static func consoleTail(_ path: String, lines: Int = 20) -> String {
        let window = 8192
        var bytes = lastBytes(path, window)
        if bytes.count < window, bytes.filter({ $0 == UInt8(ascii: "\n") }).count <= lines {
            bytes = lastBytes(path + ".1", window - bytes.count) + bytes
        }
        guard !bytes.isEmpty else { return "" }
        let text = String(decoding: bytes.compactMap { b -> UInt8? in
            if b == UInt8(ascii: "\r") { return nil }
            return b < 0x20 && b != UInt8(ascii: "\n") && b != UInt8(ascii: "\t") || b == 0x7F ? UInt8(ascii: "?") : b
        }, as: UTF8.self)
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines + 1)
            .joined(separator: "\n").trimmingTrailingNewlines()
    }

    /// Up to the last `count` bytes of the file at `path` (none if it cannot be read).
    static func lastBytes(_ path: String, _ count: Int) -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, count > 0 else { if fd >= 0 { Glibc.close(fd) }; return [] }
        defer { Glibc.close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return [] }
        let start = max(0, size - off_t(count))
        var buffer = [UInt8](repeating: 0, count: Int(size - start))
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, start) }
        return n > 0 ? Array(buffer[0..<n]) : []
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.hasSuffix("\n") || s.hasSuffix("\r") { s.removeLast() }
        return s
    }
}

