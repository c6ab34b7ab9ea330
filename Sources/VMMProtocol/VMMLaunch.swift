/// Everything a VMM process needs to start one VM: boot a kernel or restore a snapshot, the
/// jail it enters and its seccomp mode. The supervisor encodes it and sends it as the first
/// message on fd 3 of the jailed `kiln-vmm` (docs/security.md, "Launch configuration"); the
/// VMM decodes it, so nothing is formatted into argv and parsed back (an image path may hold
/// any character but NUL). Names of enums from higher targets (host profile, boot protocol,
/// seccomp mode) travel as their raw values and are checked where those types live.
public struct VMMLaunch: Sendable, Equatable {
    public enum Machine: Sendable, Equatable {
        case boot(Boot)
        case restore(Restore)
    }

    public struct Boot: Sendable, Equatable {
        public var kernel: String
        public var initrd: String?
        public var cmdline: String
        public var cpus: Int
        public var memoryMiB: Int
        public var hostProfile: String
        public var bootProtocol: String?
        public var disks: [Disk]
        public var net: Net?
        public var vsock: Vsock?
        /// virtio-fs devices after the others (docs/volumes.md); a share without a path is a spare slot.
        public var shares: [Share]

        public init(kernel: String, initrd: String?, cmdline: String, cpus: Int, memoryMiB: Int, hostProfile: String,
                    bootProtocol: String? = nil, disks: [Disk] = [], net: Net? = nil, vsock: Vsock? = nil, shares: [Share] = []) {
            self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline; self.cpus = cpus; self.memoryMiB = memoryMiB
            self.hostProfile = hostProfile; self.bootProtocol = bootProtocol; self.disks = disks; self.net = net; self.vsock = vsock
            self.shares = shares
        }
    }

    /// A host directory served to the guest over virtio-fs, under `tag`.
    public struct Share: Sendable, Equatable {
        public var tag: String
        public var path: String?
        public var readOnly: Bool
        /// Owner of the files the guest creates.
        public var uid: UInt32
        public var gid: UInt32
        /// ShareOptions.Cache's raw value.
        public var cache: String
        public init(tag: String, path: String?, readOnly: Bool = false, uid: UInt32 = 0, gid: UInt32 = 0, cache: String = "auto") {
            self.tag = tag; self.path = path; self.readOnly = readOnly; self.uid = uid; self.gid = gid; self.cache = cache
        }
    }

    /// The bound shares of this launch: whose files a jailed VMM must reach.
    public var boundShares: [Share] {
        switch machine {
        case .boot(let b): b.shares.filter { $0.path != nil }
        case .restore(let r): r.shares.filter { $0.path != nil }
        }
    }

    /// One token bucket of a rate limit (Devices.TokenBucket.Limit): tokens are bytes or operations.
    public struct Bucket: Sendable, Equatable {
        public var size: UInt64
        public var oneTimeBurst: UInt64
        public var refillMilliseconds: UInt64
        public init(size: UInt64, oneTimeBurst: UInt64, refillMilliseconds: UInt64) {
            self.size = size; self.oneTimeBurst = oneTimeBurst; self.refillMilliseconds = refillMilliseconds
        }
    }

    /// A device queue's rate limit (Devices.RateLimit): neither bucket is unlimited.
    public struct RateLimit: Sendable, Equatable {
        public var bandwidth: Bucket?
        public var operations: Bucket?
        public init(bandwidth: Bucket? = nil, operations: Bucket? = nil) { self.bandwidth = bandwidth; self.operations = operations }
    }

    public struct Disk: Sendable, Equatable {
        public var path: String
        public var readOnly: Bool
        public var overlay: Bool
        public var limit: RateLimit
        public init(path: String, readOnly: Bool = false, overlay: Bool = false, limit: RateLimit = RateLimit()) {
            self.path = path; self.readOnly = readOnly; self.overlay = overlay; self.limit = limit
        }
    }

    public struct Net: Sendable, Equatable {
        /// nil: the kernel picks a free kiln%d.
        public var tap: String?
        public var mac: [UInt8]
        /// The host side's IPv4 address and prefix, and the guest's address (both or neither).
        public var host: String?
        public var hostPrefix: Int
        public var guest: String?
        /// The network namespace file to join before opening the TAP (a sandbox network's).
        public var netns: String?
        /// What the guest receives and what it sends.
        public var rxLimit: RateLimit
        public var txLimit: RateLimit
        public init(tap: String?, mac: [UInt8], host: String? = nil, hostPrefix: Int = 0, guest: String? = nil, netns: String? = nil,
                    rxLimit: RateLimit = RateLimit(), txLimit: RateLimit = RateLimit()) {
            self.tap = tap; self.mac = mac; self.host = host; self.hostPrefix = hostPrefix; self.guest = guest; self.netns = netns
            self.rxLimit = rxLimit; self.txLimit = txLimit
        }
    }

    public struct Vsock: Sendable, Equatable {
        public var path: String
        public var cid: UInt64
        public init(path: String, cid: UInt64) { self.path = path; self.cid = cid }
    }

    public struct Restore: Sendable, Equatable {
        /// The snapshot directory.
        public var snapshot: String
        public var hostProfile: String
        public var vsockPath: String?
        public var vsockCID: UInt64?
        public var net: Net?
        /// Directories bound to the snapshot's spare virtio-fs slots, by tag.
        public var shares: [Share]
        /// The clone's rate limits (every disk; the NIC's receive and transmit); nil keeps the snapshot's.
        public var diskLimit: RateLimit?
        public var netRxLimit: RateLimit?
        public var netTxLimit: RateLimit?
        public init(snapshot: String, hostProfile: String, vsockPath: String? = nil, vsockCID: UInt64? = nil, net: Net? = nil,
                    shares: [Share] = [], diskLimit: RateLimit? = nil, netRxLimit: RateLimit? = nil, netTxLimit: RateLimit? = nil) {
            self.snapshot = snapshot; self.hostProfile = hostProfile; self.vsockPath = vsockPath; self.vsockCID = vsockCID; self.net = net
            self.shares = shares; self.diskLimit = diskLimit; self.netRxLimit = netRxLimit; self.netTxLimit = netTxLimit
        }
    }

    public var machine: Machine
    /// The jail to enter (the supervisor fills it in); nil for a VMM that is not jailed.
    public var jail: JailSpec?
    /// SeccompMode's raw value: kill, trap, log or off.
    public var seccomp: String
    /// The console takes no input (stdin is not read).
    public var headless: Bool
    /// The most bytes the console log (stdout, a regular file) keeps; 0: no cap. A headless VMM
    /// with a cap gets the rotation file (console.log.1) as its stdin, `consoleRotationFD`.
    public var consoleLimit: UInt64

    public init(machine: Machine, jail: JailSpec? = nil, seccomp: String = "kill", headless: Bool = false, consoleLimit: UInt64 = 0) {
        self.machine = machine; self.jail = jail; self.seccomp = seccomp; self.headless = headless; self.consoleLimit = consoleLimit
    }

    /// Where a headless VMM with a console cap finds its rotation file (it reads no input).
    public static let consoleRotationFD: Int32 = 0

    /// The rotation file's descriptor in the VMM, if this launch has one.
    public var consoleRotation: Int32? { headless && consoleLimit > 0 ? Self.consoleRotationFD : nil }

    /// "KVML" and the format version.
    static let magic: [UInt8] = [0x4B, 0x56, 0x4D, 0x4C, 4]
    /// The largest encoded launch (one SOCK_SEQPACKET message).
    public static let maxEncodedSize = 1 << 20

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.raw(Self.magic)
        switch machine {
        case .boot(let b):
            w.u8(1)
            w.string(b.kernel); w.optional(b.initrd) { $0.string($1) }; w.string(b.cmdline)
            w.u64(UInt64(b.cpus)); w.u64(UInt64(b.memoryMiB)); w.string(b.hostProfile)
            w.optional(b.bootProtocol) { $0.string($1) }
            w.array(b.disks) { w, d in w.string(d.path); w.bool(d.readOnly); w.bool(d.overlay); w.rateLimit(d.limit) }
            w.optional(b.net) { $0.net($1) }
            w.optional(b.vsock) { w, v in w.string(v.path); w.u64(v.cid) }
            w.array(b.shares) { $0.share($1) }
        case .restore(let r):
            w.u8(2)
            w.string(r.snapshot); w.string(r.hostProfile)
            w.optional(r.vsockPath) { $0.string($1) }; w.optional(r.vsockCID) { $0.u64($1) }
            w.optional(r.net) { $0.net($1) }
            w.array(r.shares) { $0.share($1) }
            w.optional(r.diskLimit) { $0.rateLimit($1) }
            w.optional(r.netRxLimit) { $0.rateLimit($1) }
            w.optional(r.netTxLimit) { $0.rateLimit($1) }
        }
        w.optional(jail) { w, j in j.encode(&w) }
        w.string(seccomp)
        w.bool(headless)
        w.u64(consoleLimit)
        return w.bytes
    }

    /// Decodes a launch; any malformed, truncated or oversized input is an error, never a crash.
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> VMMLaunch {
        guard bytes.count <= maxEncodedSize else { throw .invalid(field: "launch", why: "\(bytes.count) bytes") }
        var r = WireReader(bytes)
        try r.expect(magic: magic, format: "Kiln VMM launch configuration (version 4)")
        let machine: Machine
        switch try r.u8("machine") {
        case 1:
            let kernel = try r.string("boot.kernel")
            let initrd = try r.optional("boot.initrd") { (r: inout WireReader) throws(WireError) in try r.string("boot.initrd") }
            let cmdline = try r.string("boot.cmdline")
            let cpus = try r.int("boot.cpus", in: 1...255), memory = try r.int("boot.memory", in: 1...(1 << 20))
            let profile = try r.string("boot.hostProfile")
            let proto = try r.optional("boot.bootProtocol") { (r: inout WireReader) throws(WireError) in try r.string("boot.bootProtocol") }
            let disks = try r.array("boot.disks", max: 16) { (r: inout WireReader) throws(WireError) in
                Disk(path: try r.string("disk.path"), readOnly: try r.bool("disk.readOnly"), overlay: try r.bool("disk.overlay"),
                     limit: try r.rateLimit("disk.limit"))
            }
            let net = try r.optional("boot.net") { (r: inout WireReader) throws(WireError) in try r.net() }
            let vsock = try r.optional("boot.vsock") { (r: inout WireReader) throws(WireError) in
                Vsock(path: try r.string("vsock.path"), cid: try r.u64("vsock.cid"))
            }
            let shares = try r.array("boot.shares", max: 16) { (r: inout WireReader) throws(WireError) in try r.share() }
            machine = .boot(Boot(kernel: kernel, initrd: initrd, cmdline: cmdline, cpus: cpus, memoryMiB: memory, hostProfile: profile,
                                 bootProtocol: proto, disks: disks, net: net, vsock: vsock, shares: shares))
        case 2:
            let snapshot = try r.string("restore.snapshot"), profile = try r.string("restore.hostProfile")
            let vsockPath = try r.optional("restore.vsockPath") { (r: inout WireReader) throws(WireError) in try r.string("restore.vsockPath") }
            let cid = try r.optional("restore.vsockCID") { (r: inout WireReader) throws(WireError) in try r.u64("restore.vsockCID") }
            let net = try r.optional("restore.net") { (r: inout WireReader) throws(WireError) in try r.net() }
            let shares = try r.array("restore.shares", max: 16) { (r: inout WireReader) throws(WireError) in try r.share() }
            let disk = try r.optional("restore.diskLimit") { (r: inout WireReader) throws(WireError) in try r.rateLimit("restore.diskLimit") }
            let rx = try r.optional("restore.netRxLimit") { (r: inout WireReader) throws(WireError) in try r.rateLimit("restore.netRxLimit") }
            let tx = try r.optional("restore.netTxLimit") { (r: inout WireReader) throws(WireError) in try r.rateLimit("restore.netTxLimit") }
            machine = .restore(Restore(snapshot: snapshot, hostProfile: profile, vsockPath: vsockPath, vsockCID: cid, net: net, shares: shares,
                                       diskLimit: disk, netRxLimit: rx, netTxLimit: tx))
        case let tag:
            throw .invalid(field: "machine", why: "unknown kind \(tag)")
        }
        let jail = try r.optional("jail") { (r: inout WireReader) throws(WireError) in try JailSpec.decode(&r) }
        let seccomp = try r.string("seccomp")
        let headless = try r.bool("headless")
        let consoleLimit = try r.u64("consoleLimit")
        try r.finish()
        return VMMLaunch(machine: machine, jail: jail, seccomp: seccomp, headless: headless, consoleLimit: consoleLimit)
    }
}

extension WireWriter {
    mutating func net(_ n: VMMLaunch.Net) {
        optional(n.tap) { $0.string($1) }
        data(n.mac)
        optional(n.host) { $0.string($1) }
        u64(UInt64(n.hostPrefix))
        optional(n.guest) { $0.string($1) }
        optional(n.netns) { $0.string($1) }
        rateLimit(n.rxLimit)
        rateLimit(n.txLimit)
    }

    mutating func rateLimit(_ l: VMMLaunch.RateLimit) {
        for bucket in [l.bandwidth, l.operations] {
            optional(bucket) { w, b in w.u64(b.size); w.u64(b.oneTimeBurst); w.u64(b.refillMilliseconds) }
        }
    }

    mutating func share(_ s: VMMLaunch.Share) {
        string(s.tag); optional(s.path) { $0.string($1) }; bool(s.readOnly); u32(s.uid); u32(s.gid); string(s.cache)
    }
}

extension WireReader {
    mutating func net() throws(WireError) -> VMMLaunch.Net {
        let tap = try optional("net.tap") { (r: inout WireReader) throws(WireError) in try r.string("net.tap") }
        let mac = try data("net.mac", max: 6)
        guard mac.count == 6 else { throw .invalid(field: "net.mac", why: "\(mac.count) bytes, not 6") }
        let host = try optional("net.host") { (r: inout WireReader) throws(WireError) in try r.string("net.host") }
        let prefix = try int("net.hostPrefix", in: 0...32)
        let guest = try optional("net.guest") { (r: inout WireReader) throws(WireError) in try r.string("net.guest") }
        let netns = try optional("net.netns") { (r: inout WireReader) throws(WireError) in try r.string("net.netns") }
        return VMMLaunch.Net(tap: tap, mac: mac, host: host, hostPrefix: prefix, guest: guest, netns: netns,
                             rxLimit: try rateLimit("net.rxLimit"), txLimit: try rateLimit("net.txLimit"))
    }

    /// A rate limit; a bucket's size and refill must be non-zero and no more than a PiB and a
    /// day (what Devices.TokenBucket.Limit accepts).
    mutating func rateLimit(_ field: String) throws(WireError) -> VMMLaunch.RateLimit {
        func bucket(_ r: inout WireReader) throws(WireError) -> VMMLaunch.Bucket {
            let size = try r.u64(field + ".size"), burst = try r.u64(field + ".oneTimeBurst"), refill = try r.u64(field + ".refill")
            guard (1...(1 << 50)).contains(size), burst <= 1 << 50, (1...86_400_000).contains(refill) else {
                throw .invalid(field: field, why: "bucket of \(size) (burst \(burst)) per \(refill) ms")
            }
            return VMMLaunch.Bucket(size: size, oneTimeBurst: burst, refillMilliseconds: refill)
        }
        let bandwidth = try optional(field + ".bandwidth", bucket)
        let operations = try optional(field + ".operations", bucket)
        return VMMLaunch.RateLimit(bandwidth: bandwidth, operations: operations)
    }

    mutating func share() throws(WireError) -> VMMLaunch.Share {
        let tag = try string("share.tag")
        let path = try optional("share.path") { (r: inout WireReader) throws(WireError) in try r.path("share.path") }
        return VMMLaunch.Share(tag: tag, path: path, readOnly: try bool("share.readOnly"), uid: try u32("share.uid"),
                               gid: try u32("share.gid"), cache: try string("share.cache"))
    }
}
