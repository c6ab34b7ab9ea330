import FoundationEssentials
import Glibc
import Images
import KilnNet
import LinuxSys
import Logging
import Sandbox
import Synchronization
import VMM

/// What the service keeps about a sandbox, on disk in `STATE/sandboxes/ID.json` (written
/// atomically at every change), so that a restarted service knows every sandbox it had.
struct SandboxRecord: Codable, Sendable {
    enum State: String, Codable, Sendable { case running, paused }
    var id: String
    var tenant: String
    var templateID: String
    var alias: String?
    var clientID: String
    var startedAt: Double
    var endAt: Double
    var metadata: [String: String]
    var envVars: [String: String]
    var accessToken: String
    var autoPause: Bool
    var cpuCount: Int
    var memoryMB: Int
    var diskSizeMB: Int
    var state: State
    /// The running VM's runtime directory (for adoption after a restart).
    var runtimeDirectory: String?
    /// An OCI image's defaults (Env, WorkingDir, User) for the sandbox's processes, kept so that a
    /// sandbox adopted after a restart still applies them.
    var image: ImageConfiguration.RunConfig?
    /// The tenant's volumes mounted in it (Volumes.swift); nil or empty: none.
    var volumeMounts: [MountedVolume]? = nil
    /// Its network (Networks.swift); nil: none, the VM has no network device.
    var network: NetworkRecord? = nil
    /// The rate limits its create asked for, within the operator's (RateLimits.swift); nil: the
    /// operator's (`Settings.limits`).
    var rateLimits: RateLimitsBody? = nil
}

/// An API error in E2B's shape: the HTTP status and a message.
public struct APIError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public init(_ status: Int, _ message: String) { self.status = status; self.message = message }
    public var description: String { "\(status): \(message)" }

    static func notFound(_ id: String) -> APIError { APIError(404, "sandbox \(id) not found") }
}

/// The service's sandboxes: create, find, pause, resume and end them, enforce each tenant's quota
/// and every sandbox's timeout. All VM work runs on `blocking`, never on the cooperative pool.
public actor SandboxManager {
    public struct Settings: Sendable {
        public var stateDirectory: String
        public var hostProfile: HostProfile = .detect()
        public var isolation: Isolation = .automatic
        /// E2B's default time to live and the longest the service grants.
        public var defaultTimeout = 300
        public var maxTimeout = 86_400
        public var envdVersion = "0.5.7"
        /// Sandboxes' VMMs outlive the service (jailed ones, so as root) and a restart adopts them.
        public var lifetime: Sandbox.Lifetime = geteuid() == 0 ? .detached : .tiedToProcess
        /// Warm pools: restored sandboxes kept ready per template (WarmPool.swift).
        public var pool = PoolSettings()
        /// Seconds a sandbox (a pool member, or one between commands) may go untalked-to before its
        /// vCPUs are parked (`Sandbox.parkWhenIdle`); the next request resumes it. Nil: never.
        public var idlePause: Double? = SandboxManager.defaultIdlePause
        /// The owner of new volumes' directories (Volumes.swift); nil: the service's user. As root:
        /// E2B's `user` (1000:1000), whom the guest's commands run as.
        public var volumeOwner: (uid: UInt32, gid: UInt32)? = geteuid() == 0 ? (1000, 1000) : nil
        /// Who sets up sandbox networks (the launcher, as root); nil: creates that ask for a
        /// network are refused.
        public var networks: LauncherNetworks?
        /// The most bytes each sandbox's console log keeps (then console.log.1): what a guest
        /// spamming its console costs the host's disk, at most twice this.
        public var consoleLimit = Sandbox.defaultConsoleLimit
        /// The operator's rate limits for every sandbox (`kiln serve --disk-rate/--net-rate`): one
        /// tenant's disk or network traffic cannot take the host's from the others. Nil: the
        /// template's own (none unless it was made with some). The NIC's limit applies to
        /// sandboxes with a network.
        public var limits: Sandbox.Limits?
        public init(stateDirectory: String) { self.stateDirectory = stateDirectory }

        /// The limits a sandbox restored with or without a network gets.
        func limits(networked: Bool) -> Sandbox.Limits? {
            limits.map { networked ? $0 : Sandbox.Limits(disk: $0.disk) }
        }
    }

    /// Off by default for now: with 10 s, the E2B suite's 10 MiB upload into a sandbox that had
    /// been parked stalled with the VM still parked (not yet understood). `--idle-pause 10` is
    /// what the density benchmark measured.
    public static let defaultIdlePause: Double? = nil

    /// Finds (making it on first use, if it knows how) the snapshot directory of a template.
    public typealias TemplateResolver = @Sendable (String) async throws -> String

    final class Entry: @unchecked Sendable {
        var record: SandboxRecord
        var live: ServiceSandbox?
        /// A pause, resume or kill is under way: other changes wait or are refused.
        var busy = false
        init(record: SandboxRecord, live: ServiceSandbox?) { self.record = record; self.live = live }
    }

    let settings: Settings
    let tenants: Tenants
    let resolveTemplate: TemplateResolver
    /// The same template made with a network device (Networks.swift); nil: none can be.
    let resolveNetworkTemplate: TemplateResolver?
    let blocking: BlockingExecutor
    let logger: Logger
    public let metrics: Metrics
    var entries: [String: Entry] = [:]
    /// Creates under way per tenant, counted against its quota before their VM exists.
    var pending: [String: (count: Int, memory: Int)] = [:]
    var ttlTask: Task<Void, Never>?
    /// Warm pools by template id, and whether the service is stopping (no refills then).
    var pools: [String: WarmPool] = [:]
    var stopping = false
    /// The tenants' volumes, and how many creates under way will mount each (by volume id).
    let volumes: VolumeStore
    var mounting: [String: Int] = [:]

    public init(settings: Settings, tenants: Tenants, resolveTemplate: @escaping TemplateResolver,
                resolveNetworkTemplate: TemplateResolver? = nil, metrics: Metrics, logger: Logger) throws {
        self.settings = settings
        self.tenants = tenants
        self.resolveTemplate = resolveTemplate
        self.resolveNetworkTemplate = resolveNetworkTemplate
        self.metrics = metrics
        self.logger = logger
        blocking = BlockingExecutor(threads: 32)
        volumes = VolumeStore(root: settings.stateDirectory + "/volumes", owner: settings.volumeOwner)
        for sub in ["sandboxes", "snapshots", "vms", "saved", "volumes"] {
            do { try FileIO.makeDirectories(settings.stateDirectory + "/" + sub) } catch { throw APIError(500, "\(error)") }
        }
    }

    var recordsDirectory: String { settings.stateDirectory + "/sandboxes" }
    var snapshotsDirectory: String { settings.stateDirectory + "/snapshots" }
    var vmsDirectory: String { settings.stateDirectory + "/vms" }

    // MARK: Start-up and the timeout sweep

    /// Loads the records a previous run left: paused sandboxes stay paused, running ones are
    /// adopted when their VM still runs, and the rest are reaped.
    public func recover() async {
        for dead in Sandbox.sweepDead(in: vmsDirectory) { logger.info("reaped the VM left in \(dead)") }
        for files in volumes.leftovers() {
            logger.info("removing \(files): a deleted volume's files")
            _ = try? await blocking.run { FileIO.removeTree(files) }
        }
        for name in FileIO.entries(recordsDirectory) where name.hasSuffix(".json") {
            let path = recordsDirectory + "/" + name
            guard let bytes = try? FileIO.read(path), let record = try? JSONDecoder().decode(SandboxRecord.self, from: Data(bytes)) else {
                logger.warning("dropping unreadable sandbox record \(path)")
                unlink(path)
                continue
            }
            switch record.state {
            case .paused:
                entries[record.id] = Entry(record: record, live: nil)
            case .running:
                if let live = await adopt(record) {
                    entries[record.id] = Entry(record: record, live: live)
                    logger.info("adopted running sandbox \(record.id)")
                } else {
                    logger.info("sandbox \(record.id) ended while the service was down: reaped")
                    forget(record.id)
                }
            }
        }
        // A detached VM no record names is a warm pool's (pooled sandboxes have no record) left
        // by a service that was killed: nobody will use it.
        if settings.lifetime == .detached {
            let known = Set(entries.values.compactMap(\.record.runtimeDirectory))
            for directory in Sandbox.detachedSandboxes(in: vmsDirectory) where !known.contains(directory) {
                logger.info("stopping the VM in \(directory): no sandbox record names it (a warm pool's)")
                _ = try? await blocking.run { Sandbox.killDetached(directory: directory) }
            }
        }
        updateGauges()
    }

    /// Reconnects to a sandbox whose VM outlived the previous service process.
    func adopt(_ record: SandboxRecord) async -> ServiceSandbox? {
        guard let directory = record.runtimeDirectory, settings.lifetime == .detached else { return nil }
        do {
            let sandbox = try await blocking.run { try await Sandbox.adopt(directory: directory) }
            sandbox.parkWhenIdle(after: settings.idlePause)
            let live = ServiceSandbox(id: record.id, sandbox: sandbox, envVars: record.envVars, image: record.image, blocking: blocking,
                                      networkIndex: record.network?.index)
            await live.reattach()
            return live
        } catch {
            logger.info("sandbox \(record.id) cannot be adopted: \(error)")
            return nil
        }
    }

    public func startTimeoutSweep() {
        ttlTask = Task(executorPreference: BlockingExecutor.service) { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 500_000_000)
                await self?.sweepExpired()
                await self?.maintainPools()
            }
        }
    }

    /// The host enforces every timeout: a sandbox past its end is paused (autoPause) or killed,
    /// whether or not its guest answers.
    func sweepExpired() async {
        let now = Timestamps.now()
        // A VM that ended by itself (its VMM killed, the guest powered off, the OOM killer) takes
        // its sandbox with it: it no longer counts against the tenant's limits, and the API
        // answers 404 for it, as for a killed one.
        for (id, entry) in entries where entry.record.state == .running && !entry.busy {
            guard let live = entry.live, let outcome = live.sandbox.ended else { continue }
            logger.warning("sandbox \(id): its VM ended (\(Sandbox.describe(outcome))): removing it")
            await kill(entry)
        }
        for (id, entry) in entries where entry.record.state == .running && entry.record.endAt <= now && !entry.busy {
            if entry.record.autoPause {
                logger.info("sandbox \(id) reached its timeout: pausing")
                do { try await pause(entry) } catch where entries[id] === entry {
                    logger.warning("pausing expired sandbox \(id) failed (\(error)): killing it")
                    await kill(entry)
                } catch {
                    // Its VM ended under the pause: the snapshot's failure removed it already.
                }
            } else {
                logger.info("sandbox \(id) reached its timeout: killing")
                await kill(entry)
            }
        }
    }

    // MARK: The API's operations

    func create(tenant: Tenant, _ request: NewSandboxRequest, arrived: Double? = nil) async throws(APIError) -> SandboxRecord {
        let started = Timestamps.now()
        let waited = arrived.map { max(0, started - $0) } ?? 0
        // The checks `kiln run` makes, with the same messages naming the request's fields.
        do throws(SettingError) { try request.validate() } catch { throw APIError(400, error.apiDescription) }
        let mounts = try resolveMounts(tenant: tenant, request)
        let policy = try request.egressPolicy()
        if policy != nil && settings.networks == nil {
            throw APIError(400, "this service gives sandboxes no network (it runs without root): create without allow_internet_access and network")
        }
        // Limits beyond the operator's are refused before any template is looked up (startRecord
        // settles them once it knows whether the sandbox has a network).
        _ = try RateLimitsBody.effective(asked: request.rateLimits, ceiling: settings.limits, networked: true)
        // A tenant at its sandbox limit is refused before its template is looked up (or built: `base` boots a VM).
        try checkCount(tenant)
        let template: String
        var pooled = false
        do {
            if let saved = savedSnapshot(tenant: tenant, request.templateID) { template = saved.directory } else if policy != nil {
                guard let resolveNetworkTemplate else { throw APIError(400, "this service has no templates with a network device") }
                template = try await resolveNetworkTemplate(request.templateID)
            } else {
                template = try await resolveTemplate(request.templateID)
                pooled = true
            }
        } catch let e as APIError { throw e } catch {
            throw APIError(500, "template '\(request.templateID)' cannot be used: \(error)")
        }
        return try await startRecord(tenant: tenant, request, snapshot: template, started: started, waited: waited, pooled: pooled,
                                     volumes: mounts, network: policy.map { (request.allowInternetAccess, $0) },
                                     limits: request.rateLimits)
    }

    /// The volumes a create names, checked: the tenant's own, by name, at valid guest paths.
    func resolveMounts(tenant: Tenant, _ request: NewSandboxRequest) throws(APIError) -> [MountedVolume] {
        let mounts = request.volumeMounts ?? []
        guard !mounts.isEmpty else { return [] }
        try VolumeMountRequest.check(mounts, slots: Sandbox.defaultShareSlots)
        // A sandbox with volumes cannot be snapshotted (docs/volumes.md), so it cannot pause.
        if request.autoPause == true {
            throw APIError(400, "autoPause cannot be combined with volumeMounts: a sandbox with volumes cannot be paused")
        }
        return try mounts.map { (m) throws(APIError) in
            // Another tenant's volume is not found, exactly as one that never existed.
            guard let v = volumes.named(tenant: tenant.name, m.name) else { throw APIError(400, "volumeMounts: no volume named '\(m.name)'") }
            return MountedVolume(volumeID: v.id, name: v.name, path: m.path)
        }
    }

    /// Starts a sandbox from a snapshot directory (a template, a saved snapshot, a fork's) and
    /// records it; the tenant's quota is checked with the snapshot's memory size. `pooled`: a
    /// template's snapshot, whose warm pool may have a sandbox ready.
    func startRecord(tenant: Tenant, _ request: NewSandboxRequest, snapshot template: String,
                     started: Double = Timestamps.now(), waited: Double = 0, pooled: Bool = false,
                     volumes mounts: [MountedVolume] = [],
                     network asked: (allowInternetAccess: Bool?, policy: EgressPolicy)? = nil,
                     limits askedLimits: RateLimitsBody? = nil) async throws(APIError) -> SandboxRecord {
        let timeout = request.timeout ?? settings.defaultTimeout
        let info: SnapshotInfo
        do { info = try SnapshotInfo.read(directory: template) } catch {
            throw APIError(500, "template '\(request.templateID)' is damaged: \(error)")
        }
        // A snapshot saved from a sandbox with a network has a network device: it restores with a
        // network, closed unless the create opened it; one without cannot gain one.
        var asked = asked
        if info.config.net != nil && asked == nil {
            guard settings.networks != nil else { throw APIError(400, "snapshot '\(request.templateID)' has a network device, and this service gives no networks") }
            asked = (false, EgressPolicy(internet: false))
        } else if info.config.net == nil && asked != nil {
            throw APIError(400, "snapshot '\(request.templateID)' was saved from a sandbox without a network: it cannot have one")
        }
        // Checked (and combined with the operator's) before any quota is taken or VM started.
        let limits = try RateLimitsBody.effective(asked: askedLimits, ceiling: settings.limits, networked: asked != nil)
        let recordedLimits = askedLimits == nil ? nil : limits.map(RateLimitsBody.init)
        // Volumes bind the template's spare virtio-fs slots; an older template may have none.
        guard mounts.count <= info.config.shares.count else {
            throw APIError(400, "volumeMounts: template '\(request.templateID)' takes at most \(info.config.shares.count) volumes")
        }
        let memoryMB = Int(info.memoryBytes >> 20)
        try reserve(tenant, memoryMB: memoryMB)
        defer { release(tenant, memoryMB: memoryMB) }
        // A volume a create is about to mount is not deleted meanwhile (deleteVolume checks this).
        for m in mounts { mounting[m.volumeID, default: 0] += 1 }
        defer { for m in mounts { mounting[m.volumeID, default: 1] -= 1; if mounting[m.volumeID] == 0 { mounting[m.volumeID] = nil } } }
        var bound: [Volume] = []
        for m in mounts {
            guard let v = try? volumes.get(tenant: tenant.name, id: m.volumeID) else { throw APIError(400, "volumeMounts: no volume named '\(m.name)'") }
            bound.append(Volume(host: volumes.dataDirectory(v), guest: m.path))
        }

        let id = Random.sandboxID()
        let live: ServiceSandbox
        do {
            // A pooled sandbox was restored without volumes, and they bind only at restore: a
            // create with volumes restores its own.
            if pooled, bound.isEmpty, asked == nil, askedLimits == nil,
               let ready = await handOutPooled(request.templateID, snapshot: template, id: id, envVars: request.envVars ?? [:]) {
                live = ready
            } else {
                live = try await start(id: id, snapshot: template, envVars: request.envVars ?? [:], volumes: bound, network: asked?.policy,
                                       limits: limits)
            }
        } catch {
            metrics.count(error: "create")
            throw error
        }
        let now = Timestamps.now()
        let record = SandboxRecord(
            id: id, tenant: tenant.name, templateID: request.templateID, alias: request.templateID, clientID: "kiln",
            startedAt: now, endAt: now + Double(min(timeout, settings.maxTimeout)), metadata: request.metadata ?? [:],
            envVars: request.envVars ?? [:], accessToken: Random.hex(bytes: 24), autoPause: request.autoPause ?? false,
            cpuCount: info.vcpus, memoryMB: memoryMB, diskSizeMB: Int((info.config.disks.first.map { fileSize($0.path) } ?? 0) >> 20),
            state: .running, runtimeDirectory: live.sandbox.directory, image: live.image,
            volumeMounts: mounts.isEmpty ? nil : mounts,
            network: asked.map { NetworkRecord(allowInternetAccess: $0.allowInternetAccess, policy: $0.policy, index: live.networkIndex) },
            rateLimits: recordedLimits)
        entries[id] = Entry(record: record, live: live)
        save(record)
        metrics.observeCreate(seconds: Timestamps.now() - started, waited: waited)
        updateGauges()
        logger.info("created sandbox \(id) for tenant \(tenant.name) from template \(request.templateID)")
        return record
    }

    func get(tenant: Tenant, id: String) throws(APIError) -> SandboxRecord {
        try entry(tenant, id).record
    }

    func list(tenant: Tenant) -> [SandboxRecord] {
        entries.values.map(\.record).filter { $0.tenant == tenant.name }.sorted { $0.startedAt < $1.startedAt }
    }

    func kill(tenant: Tenant, id: String) async throws(APIError) {
        let e = try entry(tenant, id)
        guard !e.busy else { throw APIError(409, "sandbox \(id) is being paused or resumed") }
        await kill(e)
    }

    func setTimeout(tenant: Tenant, id: String, seconds: Int) throws(APIError) {
        guard seconds >= 0 else { throw APIError(400, "timeout must not be negative") }
        let e = try entry(tenant, id)
        e.record.endAt = Timestamps.now() + Double(min(seconds, settings.maxTimeout))
        save(e.record)
    }

    func pause(tenant: Tenant, id: String) async throws(APIError) {
        let e = try entry(tenant, id)
        guard e.record.state == .running else { throw APIError(409, "sandbox \(id) is already paused") }
        guard !e.busy else { throw APIError(409, "sandbox \(id) is being paused or resumed") }
        try await pause(e)
    }

    /// Resumes a paused sandbox (E2B's connect and resume); a running one only gets its timeout
    /// extended. Returns the record and whether it was resumed.
    func connect(tenant: Tenant, id: String, timeout: Int?) async throws(APIError) -> (SandboxRecord, resumed: Bool) {
        let e = try entry(tenant, id)
        guard !e.busy else { throw APIError(409, "sandbox \(id) is being paused or resumed") }
        let seconds = min(timeout ?? settings.defaultTimeout, settings.maxTimeout)
        if e.record.state == .running {
            if timeout != nil {
                e.record.endAt = max(e.record.endAt, Timestamps.now() + Double(seconds))
                save(e.record)
            }
            return (e.record, false)
        }
        guard let t = tenants.all.first(where: { $0.name == e.record.tenant }) else { throw APIError(404, "sandbox \(id) not found") }
        try reserve(t, memoryMB: e.record.memoryMB)
        defer { release(t, memoryMB: e.record.memoryMB) }
        e.busy = true
        defer { e.busy = false }
        let live = try await start(id: id, snapshot: snapshotDirectory(id), envVars: e.record.envVars, network: e.record.network?.policy,
                                   limits: try recordedLimits(e.record))
        e.live = live
        e.record.network?.index = live.networkIndex
        e.record.state = .running
        e.record.runtimeDirectory = live.sandbox.directory
        e.record.endAt = Timestamps.now() + Double(seconds)
        save(e.record)
        updateGauges()
        logger.info("resumed sandbox \(id)")
        return (e.record, true)
    }

    // MARK: Volumes

    func listVolumes(tenant: Tenant) -> [VolumeRecord] { volumes.list(tenant: tenant.name) }

    func volume(tenant: Tenant, id: String) throws(APIError) -> VolumeRecord { try volumes.get(tenant: tenant.name, id: id) }

    func createVolume(tenant: Tenant, name: String) throws(APIError) -> VolumeRecord {
        let v = try volumes.create(tenant: tenant.name, name: name)
        logger.info("created volume \(v.id) '\(v.name)' for tenant \(tenant.name)")
        return v
    }

    /// Refused (409) while a running sandbox has the volume mounted or a create is mounting it:
    /// its files are in use, and a later create of the same name would see none of them.
    func deleteVolume(tenant: Tenant, id: String) async throws(APIError) {
        let v = try volumes.get(tenant: tenant.name, id: id)
        let users = entries.values.filter { e in (e.record.volumeMounts ?? []).contains { $0.volumeID == v.id } }.map(\.record.id).sorted()
        guard users.isEmpty, mounting[v.id] == nil else {
            let who = users.isEmpty ? "a sandbox being created" : "sandbox " + users.joined(separator: ", ")
            throw APIError(409, "volume \(v.id) '\(v.name)' is mounted by \(who): kill it first")
        }
        let files = try volumes.delete(v)
        _ = try? await blocking.run { FileIO.removeTree(files) }
        logger.info("deleted volume \(v.id) '\(v.name)' of tenant \(tenant.name)")
    }

    // MARK: Snapshots and forks

    /// A snapshot a tenant saved from one of its sandboxes (E2B's `create_snapshot`): usable as
    /// a template id by that tenant only. `STATE/saved/ID/` holds the snapshot and `saved.json`.
    struct SavedSnapshot: Codable, Sendable {
        var id: String
        var tenant: String
        var names: [String]
        var sandboxID: String
        var createdAt: Double
    }

    var savedDirectory: String { settings.stateDirectory + "/saved" }

    func savedSnapshots(tenant: Tenant) -> [(SavedSnapshot, String)] {
        FileIO.entries(savedDirectory).filter { !$0.hasPrefix(".") }.compactMap { name in
            let dir = savedDirectory + "/" + name
            guard let bytes = try? FileIO.read(dir + "/saved.json"),
                  let s = try? JSONDecoder().decode(SavedSnapshot.self, from: Data(bytes)), s.tenant == tenant.name else { return nil }
            return (s, dir)
        }.sorted { $0.0.createdAt < $1.0.createdAt }
    }

    func savedSnapshot(tenant: Tenant, _ idOrName: String) -> (snapshot: SavedSnapshot, directory: String)? {
        savedSnapshots(tenant: tenant).first { $0.0.id == idOrName || $0.0.names.contains(idOrName) }.map { ($0.0, $0.1) }
    }

    /// Snapshots a running sandbox (it pauses for the copy and runs on) into `directory`.
    func takeSnapshot(_ e: Entry, into directory: String) async throws(APIError) {
        guard e.record.state == .running, let live = e.live else { throw APIError(409, "sandbox \(e.record.id) is paused: resume it first") }
        guard !e.busy else { throw APIError(409, "sandbox \(e.record.id) is being paused or resumed") }
        // The guest's open files in a volume are descriptors of the VMM, which no snapshot carries.
        // 400, not 409: the SDK reads a pause's 409 as "already paused" and says nothing.
        guard (e.record.volumeMounts ?? []).isEmpty else {
            throw APIError(400, "sandbox \(e.record.id) has volumes mounted: it cannot be paused, snapshotted or forked")
        }
        e.busy = true
        defer { e.busy = false }
        // A Pong settles every frame sent before it: with no stream open the session then stands
        // at a frame boundary (`AgentClient.idleMark`), the snapshot records it, and the resumed
        // sandbox goes on with the same connection instead of a reconnect and handshake.
        _ = try? await live.agent.ping()
        do {
            try await blocking.run {
                try FileIO.makeDirectories(directory)
                try live.sandbox.snapshot(to: directory)
                // A sandbox of an OCI image keeps its image's defaults across pause and in saved snapshots.
                if let image = live.image { try Templates.writeImageConfig(image, snapshotDirectory: directory) }
            }
        } catch {
            FileIO.removeTree(directory)
            // The VMM gone under the snapshot (its end is seen by a thread that waits for it,
            // a moment after the snapshot's own error): the sandbox is gone too.
            for _ in 0..<40 where live.sandbox.ended == nil { try? await Task.sleep(for: .milliseconds(25)) }
            if let outcome = live.sandbox.ended {
                logger.warning("sandbox \(e.record.id): its VM ended during a snapshot (\(Sandbox.describe(outcome))): removing it")
                await kill(e)
                throw APIError(500, "cannot snapshot sandbox \(e.record.id): its VM ended (\(Sandbox.describe(outcome))); the sandbox is gone")
            }
            throw APIError(500, "cannot snapshot sandbox \(e.record.id): \(error)")
        }
    }

    func saveSnapshot(tenant: Tenant, id: String, name: String?) async throws(APIError) -> SavedSnapshot {
        let e = try entry(tenant, id)
        if let name {
            guard !name.isEmpty, name.utf8.count <= 128, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") }) else {
                throw APIError(400, "invalid snapshot name '\(name)'")
            }
        }
        let snapshotID = "snap-" + Random.hex(bytes: 8)
        let dir = savedDirectory + "/" + snapshotID, fresh = savedDirectory + "/." + snapshotID
        try await takeSnapshot(e, into: fresh)
        // A name already used by this tenant moves to the new snapshot (E2B: a new build of the template).
        if let name { for (old, oldDir) in savedSnapshots(tenant: tenant) where old.names.contains(name) { FileIO.removeTree(oldDir) } }
        let saved = SavedSnapshot(id: snapshotID, tenant: tenant.name, names: name.map { [$0] } ?? [], sandboxID: id, createdAt: Timestamps.now())
        do {
            try FileIO.writeAtomically(fresh + "/saved.json", Array(try JSONEncoder().encode(saved)))
        } catch {
            FileIO.removeTree(fresh)
            throw APIError(500, "cannot save the snapshot: \(error)")
        }
        rename(fresh, dir)
        logger.info("saved snapshot \(snapshotID) of sandbox \(id)")
        return saved
    }

    func deleteSnapshot(tenant: Tenant, idOrName: String) throws(APIError) {
        // Sandboxes restored from it keep running: their VMMs hold the files open.
        guard let (_, dir) = savedSnapshot(tenant: tenant, idOrName) else { throw APIError(404, "snapshot '\(idOrName)' not found") }
        FileIO.removeTree(dir)
    }

    /// E2B's fork: one snapshot of a running sandbox, restored `count` times as new sandboxes
    /// with the source's metadata and env vars. Each clone has its own result (sandbox or error).
    func fork(tenant: Tenant, id: String, count: Int, timeout: Int?) async throws(APIError) -> [Result<SandboxRecord, APIError>] {
        guard (1...100).contains(count) else { throw APIError(400, "count must be 1 to 100") }
        let e = try entry(tenant, id)
        let dir = savedDirectory + "/.fork-" + Random.hex(bytes: 8)
        try await takeSnapshot(e, into: dir)
        // The clones' VMMs keep the snapshot's files open: the directory goes when all have started.
        defer { FileIO.removeTree(dir) }
        let source = e.record
        var results: [Result<SandboxRecord, APIError>] = []
        for _ in 0..<count {
            do {
                let request = NewSandboxRequest(templateID: source.templateID, timeout: timeout, autoPause: source.autoPause,
                                                metadata: source.metadata, envVars: source.envVars)
                results.append(.success(try await startRecord(tenant: tenant, request, snapshot: dir,
                                                              network: source.network.map { ($0.allowInternetAccess, $0.policy) },
                                                              limits: source.rateLimits)))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }

    /// One sample of what the sandbox's VM costs the host (E2B's SandboxMetric): its VMM's CPU
    /// since start and its resident memory; empty for a paused sandbox.
    func metrics(tenant: Tenant, id: String) throws(APIError) -> [SandboxMetric] {
        let e = try entry(tenant, id)
        guard let pid = e.live?.sandbox.vmmProcess?.pid else { return [] }
        let now = Timestamps.now()
        let stat = (try? FileIO.read("/proc/\(pid)/stat")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let fields = stat.split(separator: ")").last.map { $0.split(separator: " ") } ?? []
        let ticks = fields.count > 12 ? (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) : 0
        let cpuSeconds = ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
        let status = (try? FileIO.read("/proc/\(pid)/status")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let rssKiB = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) } ?? 0
        let elapsed = max(0.001, now - e.record.startedAt)
        return [SandboxMetric(timestamp: Timestamps.rfc3339(now), timestampUnix: Int(now), cpuCount: e.record.cpuCount,
                              cpuUsedPct: min(100 * Double(e.record.cpuCount), 100 * cpuSeconds / elapsed),
                              memUsed: rssKiB * 1024, memTotal: e.record.memoryMB << 20, memCache: 0,
                              diskUsed: 0, diskTotal: e.record.diskSizeMB << 20)]
    }

    /// The running sandbox an envd request names, checked against its access token.
    func envdTarget(id: String, token: String?) throws(APIError) -> ServiceSandbox {
        guard let e = entries[id] else { throw APIError(502, "The sandbox \(id) was not found") }
        // As envd: a request without the sandbox's access token is refused (ids are 19 random
        // characters, so this says no more than the id itself did).
        guard let token, Tenants.constantTimeEqual(e.record.accessToken, token) else {
            throw APIError(401, "the sandbox's access token (X-Access-Token) is missing or wrong")
        }
        guard e.record.state == .running, let live = e.live else { throw APIError(502, "The sandbox \(id) was not found: it is paused") }
        return live
    }

    /// The running sandbox a port request names (PortProxy): no token, as E2B's public traffic;
    /// 502 as envd answers for a sandbox it does not have.
    func portTarget(id: String) throws(APIError) -> ServiceSandbox {
        guard let e = entries[id], e.record.state == .running, let live = e.live else {
            throw APIError(502, "The sandbox \(id) was not found or is paused")
        }
        return live
    }

    /// Stops the timeout sweep and the warm pools (their VMs end); the tenants' sandboxes run on.
    public func shutdown() async {
        ttlTask?.cancel()
        await stopPools()
    }

    // MARK: Internals

    func entry(_ tenant: Tenant, _ id: String) throws(APIError) -> Entry {
        // Another tenant's sandbox is answered exactly as an unknown one.
        guard let e = entries[id], e.record.tenant == tenant.name else { throw .notFound(id) }
        return e
    }

    func checkCount(_ tenant: Tenant) throws(APIError) {
        let running = entries.values.count { $0.record.tenant == tenant.name && $0.record.state == .running }
        guard running + (pending[tenant.name]?.count ?? 0) < tenant.maxSandboxes else {
            metrics.count(error: "quota")
            throw APIError(429, "tenant \(tenant.name) has reached its limit of \(tenant.maxSandboxes) running sandboxes")
        }
    }

    func reserve(_ tenant: Tenant, memoryMB: Int) throws(APIError) {
        try checkCount(tenant)
        let running = entries.values.filter { $0.record.tenant == tenant.name && $0.record.state == .running }
        let p = pending[tenant.name] ?? (0, 0)
        let memory = running.reduce(0) { $0 + $1.record.memoryMB } + p.memory
        guard memory + memoryMB <= tenant.maxMemoryMiB else {
            metrics.count(error: "quota")
            throw APIError(429, "tenant \(tenant.name) would exceed its guest memory limit of \(tenant.maxMemoryMiB) MiB (\(memory) MiB in use, \(memoryMB) MiB asked)")
        }
        pending[tenant.name] = (p.count + 1, p.memory + memoryMB)
    }

    func release(_ tenant: Tenant, memoryMB: Int) {
        if let p = pending[tenant.name] { pending[tenant.name] = (p.count - 1, p.memory - memoryMB) }
    }

    /// `limits`: as `RateLimitsBody.effective` gave them (nil: the snapshot's own).
    func start(id: String, snapshot: String, envVars: [String: String], volumes: [Volume] = [],
               network policy: EgressPolicy? = nil, limits: Sandbox.Limits?) async throws(APIError) -> ServiceSandbox {
        let settings = self.settings, vms = vmsDirectory
        let network: SandboxNetwork? = if let policy { try await makeNetwork(policy) } else { nil }
        do {
            let sandbox = try await blocking.run {
                try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: vms, hostProfile: settings.hostProfile,
                                          isolation: settings.isolation, lifetime: settings.lifetime, volumes: volumes, network: network,
                                          consoleLimit: settings.consoleLimit, limits: limits)
            }
            // The network's name lasts as long as its VMM (a restarted service still finds it).
            if let network, let pid = sandbox.vmmProcess?.pid { network.recordOwner(pid) }
            sandbox.parkWhenIdle(after: settings.idlePause)
            let live = ServiceSandbox(id: id, sandbox: sandbox, envVars: envVars,
                                      image: try? Templates.imageConfig(snapshotDirectory: snapshot), blocking: blocking,
                                      networkIndex: network?.index)
            await live.reattach()
            return live
        } catch {
            network?.close()
            logger.error("cannot start sandbox \(id): \(error)")
            throw APIError(500, "cannot start the sandbox: \(error)")
        }
    }

    func pause(_ e: Entry) async throws(APIError) {
        guard let live = e.live else { return }
        let id = e.record.id
        let final = snapshotDirectory(id), fresh = final + ".new"
        FileIO.removeTree(fresh)
        try await takeSnapshot(e, into: fresh)
        e.busy = true
        defer { e.busy = false }
        await live.close()
        await releaseNetwork(e)
        // The previous snapshot (a resumed sandbox's memory was mapped from it) goes only now.
        FileIO.removeTree(final)
        rename(fresh, final)
        e.live = nil
        e.record.state = .paused
        e.record.runtimeDirectory = nil
        save(e.record)
        updateGauges()
        logger.info("paused sandbox \(id)")
    }

    func kill(_ e: Entry) async {
        let id = e.record.id
        e.busy = true
        if let live = e.live { await live.close() }
        await releaseNetwork(e)
        forget(id)
        updateGauges()
        logger.info("killed sandbox \(id)")
    }

    func forget(_ id: String) {
        entries[id] = nil
        unlink(recordsDirectory + "/" + id + ".json")
        FileIO.removeTree(snapshotDirectory(id))
    }

    func snapshotDirectory(_ id: String) -> String { snapshotsDirectory + "/" + id }

    func save(_ record: SandboxRecord) {
        do {
            let data = try JSONEncoder().encode(record)
            try FileIO.writeAtomically(recordsDirectory + "/" + record.id + ".json", Array(data))
        } catch {
            logger.error("cannot save the record of sandbox \(record.id): \(error)")
        }
    }

    func updateGauges() {
        var counts: [String: [String: Int]] = [:]
        for t in tenants.all { counts[t.name] = ["running": 0, "paused": 0] }
        for e in entries.values { counts[e.record.tenant, default: [:]][e.record.state.rawValue, default: 0] += 1 }
        metrics.setSandboxes(counts)
    }

    nonisolated func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
    }

    func describe(_ r: SandboxRecord) -> SandboxDescription {
        SandboxDescription(templateID: r.templateID, alias: r.alias, sandboxID: r.id, clientID: r.clientID,
                           startedAt: Timestamps.rfc3339(r.startedAt), endAt: Timestamps.rfc3339(r.endAt),
                           cpuCount: r.cpuCount, memoryMB: r.memoryMB, diskSizeMB: r.diskSizeMB, metadata: r.metadata,
                           state: r.state.rawValue, envdVersion: settings.envdVersion, envdAccessToken: r.accessToken, domain: nil,
                           volumeMounts: r.volumeMounts.map { $0.map { VolumeMountRequest(name: $0.name, path: $0.path) } },
                           allowInternetAccess: r.network?.allowInternetAccess,
                           network: r.network.map { NetworkDescription(allowOut: $0.allowOut, denyOut: $0.denyOut) },
                           rateLimits: r.rateLimits ?? settings.limits(networked: r.network != nil).flatMap {
                               $0.disk.isUnlimited && $0.net.isUnlimited ? nil : RateLimitsBody($0)
                           })
    }

    /// The limits a recorded sandbox restores with: its own (kept as the create settled them),
    /// else the operator's.
    func recordedLimits(_ r: SandboxRecord) throws(APIError) -> Sandbox.Limits? {
        guard let own = r.rateLimits else { return settings.limits(networked: r.network != nil) }
        return Sandbox.Limits(disk: try own.disk?.limit("rateLimits.disk") ?? .unlimited,
                              net: r.network == nil ? .unlimited : try own.net?.limit("rateLimits.net") ?? .unlimited)
    }

    func created(_ r: SandboxRecord) -> CreatedSandbox {
        CreatedSandbox(templateID: r.templateID, sandboxID: r.id, alias: r.alias, clientID: r.clientID,
                       envdVersion: settings.envdVersion, envdAccessToken: r.accessToken, domain: nil)
    }
}
