import Boot
import Devices
import Glibc
import KVM
import LinuxSys
import Synchronization

/// Kiln's version as recorded in snapshots (diagnostics; compatibility is the format version).
public let kilnVersion = "0.1.0-dev"

/// The contents of a snapshot's `state` file (docs/snapshot-format.md), everything but guest memory.
struct SnapshotState: Equatable {
    static let magic = Array("KILNSNAP".utf8)
    /// 2: the vsock device's connections are saved (`VSCK`) and go on after a restore.
    static let formatVersion: UInt32 = 2
    static let headerSize = 32
    static let stateFile = "state"
    static let memoryFile = "memory"

    struct MemoryRange: Equatable { var base: UInt64; var size: UInt64; var fileOffset: UInt64 }
    struct Device: Equatable { var deviceID: UInt32; var transport: VirtioMMIOTransport.SavedState }
    /// A disk's private write layer: its written sectors are in the file `layerFile(slot)`.
    struct Layer: Equatable { var slot: UInt32; var bitmap: [UInt64] }
    static func layerFile(_ slot: Int) -> String { "disk-\(slot).layer" }
    /// The vsock device in virtio slot `slot` and its connections.
    struct Vsock: Equatable { var slot: UInt32; var state: VsockSavedState }

    var kilnVersion: String
    var hostProfile: HostProfile
    var config: MachineConfig
    var memory: [MemoryRange]
    var memoryFileSize: UInt64
    var vm: VMState
    var vcpus: [VCPUState]
    var serial: Serial.SavedState
    var devices: [Device]
    var layers: [Layer] = []
    var vsock: [Vsock] = []

    static func == (a: SnapshotState, b: SnapshotState) -> Bool {
        a.kilnVersion == b.kilnVersion && a.hostProfile == b.hostProfile && a.config.snapshotText == b.config.snapshotText
            && a.memory == b.memory && a.memoryFileSize == b.memoryFileSize && a.vm == b.vm && a.vcpus == b.vcpus
            && a.serial == b.serial && a.devices == b.devices && a.layers == b.layers && a.vsock == b.vsock
    }

    // MARK: encoding

    func encoded() -> [UInt8] {
        var body = StateWriter()
        body.section("KILN") { $0.string(kilnVersion) }
        body.section("HOST") { $0.string(hostProfile.rawValue) }
        body.section("CONF") { $0.string(config.snapshotText) }
        body.section("MEM ") { w in
            w.u64(memoryFileSize)
            w.u32(UInt32(memory.count))
            for r in memory { w.u64(r.base); w.u64(r.size); w.u64(r.fileOffset) }
        }
        body.section("VM  ") { w in
            for b in [vm.picMaster, vm.picSlave, vm.ioapic, vm.pit, vm.clock] { w.blob(b) }
        }
        for (i, c) in vcpus.enumerated() {
            body.section("CPU ") { w in
                w.u32(UInt32(i))
                for b in [c.mpState, c.regs, c.sregs, c.fpu] { w.blob(b) }
                w.optionalBlob(c.xsave); w.optionalBlob(c.xcrs); w.optionalBlob(c.debugRegs)
                w.blob(c.lapic)
                w.u32(UInt32(c.msrs.count))
                for m in c.msrs { w.u32(m.index); w.u64(m.value) }
                w.optionalBlob(c.events)
            }
        }
        body.section("UART") { w in
            let s = serial
            for b in [s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm] { w.u8(b) }
            w.bool(s.fifoEnabled); w.bool(s.thrEmptyPending); w.blob(s.rx)
        }
        for (i, d) in devices.enumerated() {
            body.section("VIRT") { w in
                w.u32(UInt32(i)); w.u32(d.deviceID)
                let t = d.transport
                w.u32(t.status); w.u32(t.deviceFeaturesSelect); w.u32(t.driverFeaturesSelect); w.u64(t.driverFeatures)
                w.u32(t.queueSelect); w.u32(t.interruptStatus); w.u32(t.configGeneration); w.bool(t.active)
                w.u32(UInt32(t.queues.count))
                for q in t.queues {
                    w.u16(q.size); w.bool(q.ready); w.u64(q.descriptorTable); w.u64(q.availableRing); w.u64(q.usedRing)
                    w.bool(q.eventIndex); w.u16(q.lastAvailable); w.u16(q.nextUsed); w.u16(q.signalledUsed)
                }
            }
        }
        for layer in layers {
            body.section("LAYR") { w in
                w.u32(layer.slot)
                w.u32(UInt32(layer.bitmap.count))
                for word in layer.bitmap { w.u64(word) }
            }
        }
        for v in vsock {
            body.section("VSCK") { w in
                w.u32(v.slot); w.u64(v.state.guestCID); w.u32(v.state.nextPort)
                w.u32(UInt32(v.state.connections.count))
                for c in v.state.connections {
                    w.u32(c.hostPort); w.u32(c.guestPort); w.bool(c.hostInitiated)
                    for n in [c.txCnt, c.rxCnt, c.fwdCnt, c.advertisedFwdCnt, c.peerBufAlloc, c.peerFwdCnt] { w.u32(n) }
                    w.u8(c.flags.rawValue); w.blob(c.toGuest); w.blob(c.toHost)
                }
                w.u32(UInt32(v.state.control.count))
                for h in v.state.control { w.blob(h.bytes) }
            }
        }
        var file = StateWriter()
        file.bytes = SnapshotState.magic
        file.u32(SnapshotState.formatVersion)
        file.u32(0) // flags
        file.u64(UInt64(body.bytes.count))
        file.u32(CRC32.checksum(body.bytes))
        file.u32(0) // reserved
        return file.bytes + body.bytes
    }

    // MARK: decoding

    /// Why a state file was refused; every case is checked before anything is built.
    enum LoadError: Error, Equatable, CustomStringConvertible {
        case notASnapshot
        case version(found: UInt32)
        case truncated(expected: Int, got: Int)
        case checksum
        case malformed(String)

        var description: String {
            switch self {
            case .notASnapshot: return "not a Kiln snapshot (bad magic)"
            case .version(let v):
                return "snapshot format version \(v) is not supported by this Kiln (\(VMM.kilnVersion) reads version \(SnapshotState.formatVersion)); make the snapshot again"
            case .truncated(let e, let g): return "state file is truncated (\(g) of \(e) bytes)"
            case .checksum: return "state file is corrupted (checksum mismatch)"
            case .malformed(let what): return "state file is malformed (\(what))"
            }
        }
    }

    static func decode(_ bytes: [UInt8]) throws(LoadError) -> SnapshotState {
        guard bytes.count >= 8, Array(bytes[0..<8]) == magic else { throw .notASnapshot }
        var header = StateReader(bytes, what: "header")
        let fixed: (version: UInt32, length: UInt64, crc: UInt32)
        do {
            _ = try header.take(8)
            let version = try header.u32()
            guard version == formatVersion else { throw LoadError.version(found: version) }
            _ = try header.u32()
            let length = try header.u64()
            let crc = try header.u32()
            _ = try header.u32()
            fixed = (version, length, crc)
        } catch let e as LoadError { throw e } catch { throw .truncated(expected: headerSize, got: bytes.count) }
        let body = bytes[headerSize...]
        guard UInt64(body.count) >= fixed.length else {
            throw .truncated(expected: headerSize + Int(min(fixed.length, UInt64(Int32.max))), got: bytes.count)
        }
        guard UInt64(body.count) == fixed.length else { throw .malformed("\(UInt64(body.count) - fixed.length) bytes after the end") }
        guard CRC32.checksum(body) == fixed.crc else { throw .checksum }
        do { return try parse(Array(body)) } catch let e as StateReader.Truncated { throw .malformed("section \(e.what) is short") }
        catch let e as LoadError { throw e } catch { throw .malformed("\(error)") }
    }

    private static func parse(_ body: [UInt8]) throws -> SnapshotState {
        var sections: [String: [[UInt8]]] = [:]
        var r = StateReader(body, what: "section table")
        while !r.atEnd {
            let tag = String(decoding: try r.take(4), as: UTF8.self)
            sections[tag, default: []].append(try r.blob())
        }
        func one(_ tag: String) throws -> StateReader {
            guard let s = sections[tag]?.first else { throw LoadError.malformed("no \(tag.trimmingSpaces) section") }
            return StateReader(s, what: tag.trimmingSpaces)
        }
        var k = try one("KILN"), h = try one("HOST"), c = try one("CONF"), m = try one("MEM "), v = try one("VM  "), u = try one("UART")
        let version = try k.string()
        let profileName = try h.string()
        guard let profile = HostProfile(rawValue: profileName) else { throw LoadError.malformed("unknown host profile '\(profileName)'") }
        let config = try MachineConfig(snapshotText: try c.string())
        let fileSize = try m.u64()
        let ranges = try (0..<(try m.count(elementSize: 24))).map { _ in MemoryRange(base: try m.u64(), size: try m.u64(), fileOffset: try m.u64()) }
        let vm = VMState(picMaster: try v.blob(), picSlave: try v.blob(), ioapic: try v.blob(), pit: try v.blob(), clock: try v.blob())
        var vcpus: [VCPUState] = []
        for (i, raw) in (sections["CPU "] ?? []).enumerated() {
            var r = StateReader(raw, what: "CPU")
            guard try r.u32() == UInt32(i) else { throw LoadError.malformed("vCPU sections out of order") }
            let mp = try r.blob(), regs = try r.blob(), sregs = try r.blob(), fpu = try r.blob()
            let xsave = try r.optionalBlob(), xcrs = try r.optionalBlob(), debug = try r.optionalBlob()
            let lapic = try r.blob()
            let msrs = try (0..<(try r.count(elementSize: 12))).map { _ in MSR(index: try r.u32(), value: try r.u64()) }
            let events = try r.optionalBlob()
            vcpus.append(VCPUState(mpState: mp, regs: regs, sregs: sregs, fpu: fpu, xsave: xsave, xcrs: xcrs,
                                   debugRegs: debug, lapic: lapic, msrs: msrs, events: events))
        }
        guard vcpus.count == config.cpus else { throw LoadError.malformed("\(vcpus.count) vCPU sections for \(config.cpus) vCPUs") }
        let serial = Serial.SavedState(ier: try u.u8(), lcr: try u.u8(), mcr: try u.u8(), scr: try u.u8(), dll: try u.u8(), dlm: try u.u8(),
                                       fifoEnabled: try u.bool(), thrEmptyPending: try u.bool(), rx: try u.blob())
        var devices: [Device] = []
        for (i, raw) in (sections["VIRT"] ?? []).enumerated() {
            var r = StateReader(raw, what: "VIRT")
            guard try r.u32() == UInt32(i) else { throw LoadError.malformed("device sections out of order") }
            let id = try r.u32()
            let status = try r.u32(), dfs = try r.u32(), drfs = try r.u32(), features = try r.u64()
            let qsel = try r.u32(), isr = try r.u32(), generation = try r.u32(), active = try r.bool()
            let queues = try (0..<(try r.count(elementSize: 32))).map { _ in
                Virtqueue(size: try r.u16(), ready: try r.bool(), descriptorTable: try r.u64(), availableRing: try r.u64(),
                          usedRing: try r.u64(), eventIndex: try r.bool(), lastAvailable: try r.u16(), nextUsed: try r.u16(),
                          signalledUsed: try r.u16())
            }
            devices.append(Device(deviceID: id, transport: .init(status: status, deviceFeaturesSelect: dfs, driverFeaturesSelect: drfs,
                                                                  driverFeatures: features, queueSelect: qsel, interruptStatus: isr,
                                                                  configGeneration: generation, active: active, queues: queues)))
        }
        var layers: [Layer] = []
        for raw in sections["LAYR"] ?? [] {
            var r = StateReader(raw, what: "LAYR")
            let slot = try r.u32()
            let words = try (0..<(try r.count(elementSize: 8))).map { _ in try r.u64() }
            guard Int(slot) < devices.count, devices[Int(slot)].deviceID == 2 else { throw LoadError.malformed("write layer for slot \(slot), not a disk") }
            layers.append(Layer(slot: slot, bitmap: words))
        }
        var vsock: [Vsock] = []
        for raw in sections["VSCK"] ?? [] {
            var r = StateReader(raw, what: "VSCK")
            let slot = try r.u32(), cid = try r.u64(), nextPort = try r.u32()
            let connections = try (0..<(try r.count(elementSize: 42))).map { _ in
                let hostPort = try r.u32(), guestPort = try r.u32(), hostInitiated = try r.bool()
                let tx = try r.u32(), rx = try r.u32(), fwd = try r.u32(), advertised = try r.u32(), bufAlloc = try r.u32(), peerFwd = try r.u32()
                let flags = VsockSavedState.Flags(rawValue: try r.u8())
                return VsockSavedState.Connection(hostPort: hostPort, guestPort: guestPort, hostInitiated: hostInitiated, txCnt: tx, rxCnt: rx,
                                                  fwdCnt: fwd, advertisedFwdCnt: advertised, peerBufAlloc: bufAlloc, peerFwdCnt: peerFwd,
                                                  flags: flags, toGuest: try r.blob(), toHost: try r.blob())
            }
            let control = try (0..<(try r.count(elementSize: 4 + VsockHeader.size))).map { _ in
                guard let h = VsockHeader(try r.blob()) else { throw LoadError.malformed("short vsock control packet") }
                return h
            }
            guard Int(slot) < devices.count, devices[Int(slot)].deviceID == 19 else { throw LoadError.malformed("vsock state for slot \(slot), not a vsock device") }
            vsock.append(Vsock(slot: slot, state: VsockSavedState(guestCID: cid, nextPort: nextPort, connections: connections, control: control)))
        }
        return SnapshotState(kilnVersion: version, hostProfile: profile, config: config, memory: ranges, memoryFileSize: fileSize,
                             vm: vm, vcpus: vcpus, serial: serial, devices: devices, layers: layers, vsock: vsock)
    }
}

extension String {
    var trimmingSpaces: String { String(self.reversed().drop(while: { $0 == " " }).reversed()) }
}

extension MachineConfig {
    /// The configuration as `key=value` lines (the CONF section); console descriptors are not saved.
    var snapshotText: String {
        var lines = ["kernel=\(kernelPath)", "cmdline=\(cmdline)", "cpus=\(cpus)", "memory-mib=\(memoryMiB)",
                     "host-profile=\(hostProfile.rawValue)"]
        if let initrdPath { lines.append("initrd=\(initrdPath)") }
        if let bootProtocol { lines.append("boot-protocol=\(bootProtocol.rawValue)") }
        for d in disks { lines.append("disk=\(d.specString)") }
        if let net { lines.append("net=\(net.specString)") }
        if let vsock { lines.append("vsock=\(vsock.path)"); lines.append("vsock-cid=\(vsock.guestCID)") }
        // Only the slot and its tag: what a share was bound to is the clone's choice (docs/volumes.md).
        for share in shares { lines.append("share=\(share.tag)") }
        return lines.joined(separator: "\n")
    }

    init(snapshotText text: String) throws {
        var kernel: String?, initrd: String?, cmdline = MachineConfig.defaultCmdline, cpus = 1, memory = 256
        var profile = HostProfile.kvm, proto: BootProtocol?, disks: [Disk] = [], net: NetSpec?, vsockPath: String?, cid = Vsock.defaultGuestCID
        var shares: [Share] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let eq = line.firstIndex(of: "=") else { throw SnapshotState.LoadError.malformed("config line '\(line)'") }
            let key = String(line[..<eq]), value = String(line[line.index(after: eq)...])
            func bad() -> SnapshotState.LoadError { .malformed("config \(key)='\(value)'") }
            switch key {
            case "kernel": kernel = value
            case "initrd": initrd = value
            case "cmdline": cmdline = value
            case "cpus": guard let n = Int(value) else { throw bad() }; cpus = n
            case "memory-mib": guard let n = Int(value) else { throw bad() }; memory = n
            case "host-profile": guard let p = HostProfile(rawValue: value) else { throw bad() }; profile = p
            case "boot-protocol": guard let p = BootProtocol(rawValue: value) else { throw bad() }; proto = p
            case "disk": guard let d = Disk.parse(value) else { throw bad() }; disks.append(d)
            case "net": net = try NetSpec.parse(value)
            case "vsock": vsockPath = value
            case "vsock-cid": guard let n = UInt64(value) else { throw bad() }; cid = n
            case "share":
                guard VirtioFS.isValidTag(value) else { throw bad() }
                shares.append(Share(tag: value, path: nil, options: ShareOptions(readOnly: true, uid: 0, gid: 0)))
            default: break // a newer Kiln's optional setting
            }
        }
        guard let kernel else { throw SnapshotState.LoadError.malformed("config has no kernel") }
        self.init(kernelPath: kernel, initrdPath: initrd, cmdline: cmdline, cpus: cpus, memoryMiB: memory,
                  hostProfile: profile, bootProtocol: proto)
        self.disks = disks
        self.net = net
        self.vsock = vsockPath.map { Vsock(path: $0, guestCID: cid) }
        self.shares = shares
    }
}

extension NetSpec {
    /// The `--net` text that parses back to this spec.
    var specString: String {
        var parts = ["tap=\(tap ?? "auto")", "mac=\(macString)"]
        if let host, let guest { parts += ["host=\(host.address)/\(host.prefix)", "guest=\(guest)"] }
        parts += rxLimit.specOptions.map { "rx-" + $0 } + txLimit.specOptions.map { "tx-" + $0 }
        return parts.joined(separator: ",")
    }
}

/// What a snapshot directory holds, read from its state file without building anything: for
/// callers that pick or check snapshots (templates) before restoring one.
public struct SnapshotInfo: Sendable {
    public let kilnVersion: String
    public let hostProfile: HostProfile
    /// The configuration the snapshot was made with (console descriptors are the defaults).
    public let config: MachineConfig
    public let memoryBytes: UInt64
    public let vcpus: Int
    public let devices: Int

    /// Reads and checks `directory/state` (magic, version, checksum, every section). The answer
    /// for a state file already read is kept while the file is the same one (device, inode,
    /// size, ctime): a service checks its template on every create, and decoding the whole state
    /// costs tens of milliseconds in a debug build, which concurrent creates paid one after
    /// another. A template rebuilt or a state file changed in place reads anew.
    public static func read(directory: String) throws(MachineError) -> SnapshotInfo {
        let path = directory + "/" + SnapshotState.stateFile
        var st = stat()
        let identity = stat(path, &st) == 0 ? FileIdentity(st) : nil
        if let identity, let hit = cache.withLock({ $0[path] }), hit.identity == identity { return hit.info }
        let bytes: [UInt8]
        do { bytes = try readWholeFile(path) } catch { throw .snapshot(path: directory, "cannot read \(path): \(error)") }
        let info: SnapshotInfo
        do { info = try parse(bytes) } catch { throw .snapshot(path: directory, "\(error)") }
        // Kept only if the file did not change while it was read.
        var after = stat()
        if let identity, stat(path, &after) == 0, FileIdentity(after) == identity, bytes.count == Int(st.st_size) {
            cache.withLock { c in
                if c.count >= 64 { c.removeAll() }
                c[path] = (identity, info)
            }
        }
        return info
    }

    /// Checks that the memory file beside the state in `directory` is as big as the state says:
    /// a copy cut short (a full disk, a truncated file) is refused here in one line, before a VMM
    /// maps it and would fault on the missing pages.
    public func checkMemoryFile(in directory: String) throws(MachineError) {
        let path = directory + "/" + SnapshotState.memoryFile
        var st = stat()
        guard stat(path, &st) == 0 else { throw .snapshot(path: directory, "cannot read \(path): \(Errno.current("stat"))") }
        guard UInt64(st.st_size) == memoryBytes else {
            throw .snapshot(path: directory, "memory file is \(st.st_size) bytes, the state says \(memoryBytes) (truncated or from another snapshot)")
        }
    }

    struct FileIdentity: Equatable {
        let device: UInt64, inode: UInt64, size: Int64, ctimeSeconds: Int, ctimeNanoseconds: Int
        init(_ st: stat) {
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int64(st.st_size)
            ctimeSeconds = Int(st.st_ctim.tv_sec)
            ctimeNanoseconds = Int(st.st_ctim.tv_nsec)
        }
    }
    private static let cache = Mutex<[String: (identity: FileIdentity, info: SnapshotInfo)]>([:])

    /// Parses the bytes of a state file; the error text is the one-line reason.
    public static func parse(_ bytes: [UInt8]) throws(SnapshotFormatError) -> SnapshotInfo {
        let s: SnapshotState
        do { s = try SnapshotState.decode(bytes) } catch { throw SnapshotFormatError(description: error.description) }
        return SnapshotInfo(kilnVersion: s.kilnVersion, hostProfile: s.hostProfile, config: s.config,
                            memoryBytes: s.memoryFileSize, vcpus: s.vcpus.count, devices: s.devices.count)
    }
}

/// Why a state file could not be read, in one line.
public struct SnapshotFormatError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
