import Boot
import CLinux
import Devices
import Glibc
import GuestMemory
import KVM
import LinuxSys
import Seccomp

/// What a restored machine gets instead of the snapshot's settings: a clone's own identity.
public struct RestoreOverrides: Sendable {
    /// A new vsock Unix socket (the snapshot's is still in use by the original); nil keeps the recorded one.
    public var vsockPath: String?
    /// A new guest CID: the guest re-reads it after a transport reset, which Kiln then sends on
    /// restore instead of keeping the saved connections.
    public var vsockCID: UInt64?
    /// A new TAP (and MAC) for the net device; the guest's eth0 keeps its old MAC unless re-configured.
    public var net: NetSpec?
    public var consoleInput: Int32? = 0
    public var consoleOutput: Int32 = 1
    /// The console log's cap and rotation file (MachineConfig.consoleLimit; not part of a snapshot).
    public var consoleLimit: UInt64 = 0
    public var consoleRotation: Int32?
    /// The profile of this host; the snapshot must have been made under the same one.
    public var hostProfile: HostProfile = .detect()
    /// The clone's seccomp mode (not part of a snapshot).
    public var seccomp: SeccompMode = .kill
    /// How guest connections to host ports are made (a jailed VMM asks its supervisor).
    public var vsockConnector: VirtioVsock.Connector?
    /// Directories for the snapshot's spare virtio-fs slots, matched by tag (docs/volumes.md, "Templates").
    public var shares: [MachineConfig.Share] = []
    /// Rate limits for the clone: every disk's, and each direction of the NIC's; nil keeps the
    /// snapshot's (the template's), `.unlimited` drops it (docs/net.md, "Rate limits").
    public var diskLimit: RateLimit?
    public var netRxLimit: RateLimit?, netTxLimit: RateLimit?

    public init(vsockPath: String? = nil, vsockCID: UInt64? = nil, net: NetSpec? = nil,
                consoleInput: Int32? = 0, consoleOutput: Int32 = 1, hostProfile: HostProfile = .detect()) {
        self.vsockPath = vsockPath; self.vsockCID = vsockCID; self.net = net
        self.consoleInput = consoleInput; self.consoleOutput = consoleOutput; self.hostProfile = hostProfile
    }
}

/// Where `snapshot` writes. A jailed VMM sees none of the host's directories, so its supervisor
/// creates the files and passes their descriptors in (`files`); the VMM only writes them.
public enum SnapshotTarget: Sendable {
    case directory(String)
    case files(SnapshotFiles)

    var label: String {
        switch self {
        case .directory(let path): path
        case .files: "(files passed by the supervisor)"
        }
    }
}

/// Open, writable, empty files for one snapshot: guest memory, the state (written last; the
/// caller renames it into place) and one write-layer file per overlay disk, by virtio slot
/// (`Machine.overlaySlots`). The caller keeps ownership of the descriptors.
public struct SnapshotFiles: Sendable {
    public var memory: Int32
    public var state: Int32
    public var layers: [Int: Int32]

    public init(memory: Int32, state: Int32, layers: [Int: Int32]) {
        self.memory = memory; self.state = state; self.layers = layers
    }
}

/// What `snapshot(to:)` wrote, for callers that report it.
public struct SnapshotSummary: Sendable {
    public let directory: String
    public let stateBytes: Int
    /// Guest memory size (the memory file's length) and the bytes actually written (the rest are holes).
    public let memoryBytes: Int
    public let memoryBytesWritten: Int
}

extension Machine {
    /// Stops every vCPU at an instruction boundary and the device thread between requests.
    /// Returns once all are parked; the guest's clocks stand still until `resume()`.
    public func pause() throws(MachineError) {
        try control.withLock { _ throws(MachineError) in try pauseLocked() }
    }

    private func pauseLocked() throws(MachineError) {
        guard !stopping else { throw .config("the VM has stopped") }
        guard gate.close() else { return } // already paused
        for vcpu in vcpus { vcpu.requestExit() }
        lifecycle.kickThreads()
        let threads = vcpus.count + (virtio.transports.isEmpty || !lifecycle.started ? 0 : 1)
        guard lifecycle.started else { return } // not running yet: the threads park as they start
        // A vCPU blocked writing console output nobody reads cannot park: give up rather than hang.
        // Kick again every 10 ms: a signal that landed while a vCPU thread was outside KVM_RUN is
        // lost, and immediate_exit alone is not relied on (the vCPU may sit in an in-kernel HLT).
        let deadline = monotonicSeconds() + Machine.pauseTimeout
        var nextKick = monotonicSeconds() + 0.01
        guard gate.waitParked(threads, giveUp: {
            let now = monotonicSeconds()
            if now > nextKick {
                for vcpu in vcpus { vcpu.requestExit() }
                lifecycle.kickThreads()
                nextKick = now + 0.01
            }
            return stopping || now > deadline
        }) else {
            _ = gate.open()
            throw .config(stopping ? "the VM stopped while pausing"
                          : "the VM did not pause within \(Int(Machine.pauseTimeout)) s (is its console output blocked?)")
        }
    }

    /// Lets a paused VM run again.
    public func resume() throws(MachineError) {
        try control.withLock { _ throws(MachineError) in
            guard !stopping else { throw .config("the VM has stopped") }
            _ = gate.open()
        }
    }

    public var isPaused: Bool { gate.isPaused }

    /// Writes a snapshot of the VM to `directory` (created if missing): `memory`, the guest RAM
    /// (sparse), then `state` (docs/snapshot-format.md). Pauses the VM for the duration if it was
    /// running, and resumes it afterwards; a paused VM stays paused.
    @discardableResult
    public func snapshot(to directory: String) throws(MachineError) -> SnapshotSummary {
        try snapshot(.directory(directory))
    }

    /// Writes a snapshot to `target`: a directory, or files someone else opened (see SnapshotFiles).
    @discardableResult
    public func snapshot(_ target: SnapshotTarget) throws(MachineError) -> SnapshotSummary {
        try control.withLock { _ throws(MachineError) in
            let wasPaused = gate.isPaused
            try pauseLocked()
            defer { if !wasPaused { _ = gate.open() } }
            return try writeSnapshot(target)
        }
    }

    /// The virtio slots of the overlay disks, whose write layers a snapshot saves (one file each).
    public var overlaySlots: [Int] {
        virtio.transports.enumerated().compactMap { slot, t in (t.device as? VirtioBlock)?.layer == nil ? nil : slot }
    }

    private func writeSnapshot(_ target: SnapshotTarget) throws(MachineError) -> SnapshotSummary {
        let directory = target.label
        func fail(_ why: String) -> MachineError { .snapshot(path: directory, why) }
        if case .directory = target, mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw fail("cannot create the directory: \(Errno.current("mkdir"))")
        }
        guard !config.cmdline.contains("\n") else { throw fail("the kernel command line holds a newline") }
        // A bound share's state (the guest's inodes and open files) lives in this process, not in the snapshot.
        if let bound = virtio.fileSystems.first(where: { $0.server != nil }) {
            throw fail("share '\(bound.tag)' is bound to a host directory; a VM with shares cannot be snapshotted (docs/volumes.md)")
        }
        if case .files(let files) = target, Set(files.layers.keys) != Set(overlaySlots) {
            throw fail("layer files for slots \(files.layers.keys.sorted()), the VM has overlay disks in slots \(overlaySlots)")
        }

        var state: SnapshotState
        do {
            let support = StateSupport(vm.system)
            let msrIndices = try vm.system.msrIndexList()
            let cpus = try vcpus.map { (v) throws(KVMError) in try v.saveState(msrIndices: msrIndices, support: support) }
            let vmState = try vm.saveState()
            var offset: UInt64 = 0
            let ranges = memory.regions.map { r -> SnapshotState.MemoryRange in
                defer { offset += UInt64(r.size) }
                return .init(base: r.guestBase, size: UInt64(r.size), fileOffset: offset)
            }
            state = SnapshotState(kilnVersion: kilnVersion, hostProfile: config.hostProfile, config: config, memory: ranges,
                                  memoryFileSize: offset, vm: vmState, vcpus: cpus, serial: serial.save(),
                                  devices: virtio.transports.map { .init(deviceID: $0.device.deviceID, transport: $0.save()) })
        } catch {
            throw fail("cannot read the VM state: \(error)")
        }

        // Memory first, state last and renamed into place: a directory with a `state` file is complete.
        let memoryPath = directory + "/" + SnapshotState.memoryFile
        let statePath = directory + "/" + SnapshotState.stateFile
        let mfd: Int32
        switch target {
        case .directory:
            unlink(statePath)
            mfd = Glibc.open(memoryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard mfd >= 0 else { throw fail("cannot create \(memoryPath): \(Errno.current("open"))") }
        case .files(let files):
            mfd = files.memory
        }
        defer { if case .directory = target { Glibc.close(mfd) } }
        guard ftruncate(mfd, off_t(state.memoryFileSize)) == 0 else { throw fail("cannot size \(memoryPath): \(Errno.current("ftruncate"))") }
        let written: Int
        do { written = try memory.dump(toFile: mfd, offsets: state.memory.map { Int($0.fileOffset) }) }
        catch { throw fail("\(error)") }

        // Overlay disks: the written sectors are part of the guest's view of its disk.
        for (slot, transport) in virtio.transports.enumerated() {
            guard let block = transport.device as? VirtioBlock, let layer = block.layer else { continue }
            do {
                switch target {
                case .directory: try layer.save(to: directory + "/" + SnapshotState.layerFile(slot))
                case .files(let files): try layer.save(toDescriptor: files.layers[slot]!)
                }
            } catch { throw fail("cannot save the write layer of disk \(slot): \(error)") }
            state.layers.append(.init(slot: UInt32(slot), bitmap: layer.bitmap))
        }
        // The vsock connections go on in every clone (docs/vsock.md, "Snapshots").
        for (slot, transport) in virtio.transports.enumerated() {
            guard let vsock = transport.device as? VirtioVsock else { continue }
            state.vsock.append(.init(slot: UInt32(slot), state: vsock.save()))
        }

        let bytes = state.encoded()
        func writeAll(_ fd: Int32) -> Bool {
            bytes.withUnsafeBytes { b in
                var done = 0
                while done < b.count {
                    let n = Glibc.pwrite(fd, b.baseAddress! + done, b.count - done, off_t(done))
                    if n < 0 { if errno == EINTR { continue }; return false }
                    done += n
                }
                return true
            }
        }
        switch target {
        case .directory:
            let tmp = statePath + ".tmp"
            let sfd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard sfd >= 0 else { throw fail("cannot create \(tmp): \(Errno.current("open"))") }
            let ok = writeAll(sfd)
            let writeError = Errno.current("write")
            Glibc.close(sfd)
            guard ok else { unlink(tmp); throw fail("cannot write \(tmp): \(writeError)") }
            guard rename(tmp, statePath) == 0 else { throw fail("cannot rename \(tmp): \(Errno.current("rename"))") }
        case .files(let files):
            // The caller renames the state file into place once this returns.
            guard ftruncate(files.state, 0) == 0, writeAll(files.state) else { throw fail("cannot write the state file: \(Errno.current("write"))") }
        }
        return SnapshotSummary(directory: directory, stateBytes: bytes.count, memoryBytes: Int(state.memoryFileSize),
                               memoryBytesWritten: written)
    }

    /// Rebuilds a machine from the snapshot in `directory`: guest memory is the `memory` file mapped
    /// copy-on-write, so clones share its pages and restoring costs the same for any memory size.
    /// Everything is checked (format version, checksum, host profile, memory file size, device set)
    /// before a vCPU exists; call `run()` to continue the guest where it was.
    public convenience init(restoring directory: String, overrides: RestoreOverrides = RestoreOverrides()) throws(MachineError) {
        func fail(_ why: String) -> MachineError { .snapshot(path: directory, why) }
        BootTrace.mark("restore-start")
        let statePath = directory + "/" + SnapshotState.stateFile
        let bytes: [UInt8]
        do { bytes = try readWholeFile(statePath) } catch { throw fail("cannot read \(statePath): \(error)") }
        let snap: SnapshotState
        do { snap = try SnapshotState.decode(bytes) } catch { throw fail(error.description) }
        guard snap.hostProfile == overrides.hostProfile else {
            throw fail("made on a host with profile \(snap.hostProfile.rawValue); this host is \(overrides.hostProfile.rawValue)")
        }

        var config = snap.config
        config.consoleInput = overrides.consoleInput
        config.consoleOutput = overrides.consoleOutput
        config.consoleLimit = overrides.consoleLimit
        config.consoleRotation = overrides.consoleRotation
        config.seccomp = overrides.seccomp
        config.vsockConnector = overrides.vsockConnector
        if var vsock = config.vsock {
            if let path = overrides.vsockPath { vsock.path = path }
            if let cid = overrides.vsockCID { vsock.guestCID = cid }
            config.vsock = vsock
        } else if overrides.vsockPath != nil {
            throw fail("the snapshot has no vsock device; --vsock cannot add one")
        }
        if var net = overrides.net {
            guard let saved = config.net else { throw fail("the snapshot has no net device; --net cannot add one") }
            // A new TAP does not change the limits: only the limit overrides do.
            net.rxLimit = saved.rxLimit; net.txLimit = saved.txLimit
            config.net = net
        }
        if overrides.netRxLimit != nil || overrides.netTxLimit != nil {
            guard config.net != nil else { throw fail("the snapshot has no net device to rate-limit") }
            if let l = overrides.netRxLimit { config.net!.rxLimit = l }
            if let l = overrides.netTxLimit { config.net!.txLimit = l }
        }
        if let l = overrides.diskLimit { for i in config.disks.indices { config.disks[i].limit = l } }
        for share in overrides.shares {
            guard let slot = config.shares.firstIndex(where: { $0.tag == share.tag }) else {
                throw fail("the snapshot has no virtio-fs slot '\(share.tag)' (it has \(config.shares.map(\.tag)))")
            }
            config.shares[slot] = share
        }
        try config.validate()
        let specs = config.virtioDevices
        guard specs.count == snap.devices.count else { throw fail("\(snap.devices.count) devices saved, \(specs.count) configured") }

        let memoryPath = directory + "/" + SnapshotState.memoryFile
        let mfd = Glibc.open(memoryPath, O_RDONLY | O_CLOEXEC)
        guard mfd >= 0 else { throw fail("cannot open \(memoryPath): \(Errno.current("open"))") }
        defer { Glibc.close(mfd) } // the mappings keep the file
        var st = stat()
        guard fstat(mfd, &st) == 0 else { throw fail("cannot stat \(memoryPath): \(Errno.current("fstat"))") }
        guard UInt64(st.st_size) == snap.memoryFileSize else {
            throw fail("memory file is \(st.st_size) bytes, the state says \(snap.memoryFileSize) (truncated or from another snapshot)")
        }
        guard snap.memory.allSatisfy({ $0.fileOffset <= snap.memoryFileSize && $0.size <= snap.memoryFileSize - $0.fileOffset }),
              snap.memory.reduce(UInt64(0), { $0 &+ $1.size }) == UInt64(config.memoryMiB) << 20 else {
            throw fail("state file is malformed (memory ranges do not match the memory size)")
        }
        let memory: GuestMemory
        do { memory = try GuestMemory(file: mfd, layout: snap.memory.map { ($0.base, Int($0.size), Int($0.fileOffset)) }) }
        catch { throw fail("cannot map guest memory: \(error)") }
        BootTrace.mark("memory-mapped")

        let vm: VirtualMachine, vcpus: [VCPU], eventLoop: EventLoop, virtio: VirtioDevices
        do {
            let system = try KVMSystem()
            vm = try system.createVM()
            try vm.setSystemPages(tss: Layout.kvmTSS, identityMap: Layout.kvmIdentityMap)
            try vm.createInterruptControllers()
            for (slot, region) in memory.regions.enumerated() {
                try vm.setMemoryRegion(slot: UInt32(slot), guestBase: region.guestBase, size: region.size, hostAddress: region.hostAddress)
            }
            let supported = try system.supportedCPUID()
            var built: [VCPU] = []
            for id in 0..<UInt32(config.cpus) {
                let vcpu = try vm.createVCPU(id: id)
                try VCPUSetup.configure(vcpu, cpuid: CPUProfile.entries(from: supported, vcpu: id, cpus: config.cpus, profile: config.hostProfile))
                built.append(vcpu)
            }
            vcpus = built
            try vm.restoreState(snap.vm)
            for (vcpu, state) in zip(vcpus, snap.vcpus) { try vcpu.restoreState(state) }
            BootTrace.mark("kvm-state-restored")
            eventLoop = try EventLoop()
            virtio = try VirtioDevices(specs, vm: vm, memory: memory, events: eventLoop)
        } catch let error as MachineError {
            throw error
        } catch let error as KVMError {
            throw fail("cannot restore the VM state: \(error)")
        } catch {
            throw fail("\(error)")
        }
        for (transport, saved) in zip(virtio.transports, snap.devices) where transport.device.deviceID != saved.deviceID {
            throw fail("device \(saved.deviceID) saved where \(transport.device.deviceID) is configured")
        }
        for (slot, transport) in virtio.transports.enumerated() {
            guard let block = transport.device as? VirtioBlock else { continue }
            let saved = snap.layers.first { $0.slot == UInt32(slot) }
            switch (block.layer, saved) {
            case (nil, nil): continue
            case (let layer?, let saved?):
                do { try layer.restore(from: directory + "/" + SnapshotState.layerFile(slot), bitmap: saved.bitmap) }
                catch { throw fail("cannot restore the write layer of disk \(slot): \(error)") }
            default: throw fail("disk \(slot) has a write layer on only one side (snapshot vs configuration)")
            }
        }
        let confinement = try Confinement(config.seccomp)
        try self.init(config: config, loaded: nil, vm: vm, memory: memory, vcpus: vcpus, virtio: virtio, eventLoop: eventLoop,
                      confinement: confinement)
        serial.restore(snap.serial)
        for v in snap.vsock { (virtio.transports[Int(v.slot)].device as? VirtioVsock)?.prepareRestore(v.state) }
        for (transport, saved) in zip(virtio.transports, snap.devices) { transport.restore(saved.transport) }
        virtio.recheckQueuesAfterRestore()
        BootTrace.mark("restored")
    }
}

extension Machine {
    static let pauseTimeout = 10.0
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Reads a whole (small) file.
func readWholeFile(_ path: String) throws(Errno) -> [UInt8] {
    let fd = try once("open") { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
    defer { Glibc.close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; throw Errno.current("read") }
        if n == 0 { return out }
        out += chunk[0..<n]
    }
}
