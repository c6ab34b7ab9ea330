import Boot
import Devices
import Seccomp
import VMMProtocol

// The typed launch configuration (VMMProtocol.VMMLaunch) to and from this module's types.
// The CLI parses into MachineConfig/RestoreOverrides once; a jailed VMM gets the same values
// through a VMMLaunch, and the names of enums are checked here, where their types live.

extension VMMLaunch.Net {
    public init(_ spec: NetSpec) {
        self.init(tap: spec.tap, mac: spec.mac, host: spec.host?.address, hostPrefix: spec.host?.prefix ?? 0, guest: spec.guest,
                  netns: spec.netns, rxLimit: VMMLaunch.RateLimit(spec.rxLimit), txLimit: VMMLaunch.RateLimit(spec.txLimit))
    }

    public var spec: NetSpec {
        var s = NetSpec(tap: tap, mac: mac, host: host.map { (address: $0, prefix: hostPrefix) }, guest: guest, netns: netns)
        s.rxLimit = rxLimit.limit
        s.txLimit = txLimit.limit
        return s
    }
}

extension VMMLaunch.RateLimit {
    public init(_ l: RateLimit) {
        func bucket(_ b: TokenBucket.Limit?) -> VMMLaunch.Bucket? {
            b.map { VMMLaunch.Bucket(size: $0.size, oneTimeBurst: $0.oneTimeBurst, refillMilliseconds: $0.refillMilliseconds) }
        }
        self.init(bandwidth: bucket(l.bandwidth), operations: bucket(l.operations))
    }

    /// The decoder checked every bucket's range, which is TokenBucket.Limit's.
    public var limit: RateLimit {
        func bucket(_ b: VMMLaunch.Bucket?) -> TokenBucket.Limit? {
            b.map { TokenBucket.Limit(size: $0.size, oneTimeBurst: $0.oneTimeBurst, refillMilliseconds: $0.refillMilliseconds) }
        }
        return RateLimit(bandwidth: bucket(bandwidth), operations: bucket(operations))
    }
}

extension HostProfile {
    init(launch name: String) throws(MachineError) {
        guard let p = HostProfile(rawValue: name) else { throw .config("unknown host profile '\(name)'") }
        self = p
    }
}

extension SeccompMode {
    /// The mode a launch names.
    public init(launch name: String) throws(MachineError) {
        guard let m = SeccompMode(rawValue: name) else { throw .config("unknown seccomp mode '\(name)'") }
        self = m
    }
}

extension MachineConfig {
    /// This configuration as a launch's boot half (what a jailed VMM needs to build it again).
    public var launch: VMMLaunch.Boot {
        VMMLaunch.Boot(kernel: kernelPath, initrd: initrdPath, cmdline: cmdline, cpus: cpus, memoryMiB: memoryMiB,
                       hostProfile: hostProfile.rawValue, bootProtocol: bootProtocol?.rawValue,
                       disks: disks.map { VMMLaunch.Disk(path: $0.path, readOnly: $0.readOnly, overlay: $0.overlay, limit: VMMLaunch.RateLimit($0.limit)) },
                       net: net.map(VMMLaunch.Net.init), vsock: vsock.map { VMMLaunch.Vsock(path: $0.path, cid: $0.guestCID) },
                       shares: shares.map(VMMLaunch.Share.init))
    }

    /// The configuration a launch describes, with the console on stdin (unless headless) and stdout.
    public init(launch b: VMMLaunch.Boot, headless: Bool) throws(MachineError) {
        var proto: BootProtocol?
        if let name = b.bootProtocol {
            guard let p = BootProtocol(rawValue: name) else { throw .config("unknown boot protocol '\(name)'") }
            proto = p
        }
        self.init(kernelPath: b.kernel, initrdPath: b.initrd, cmdline: b.cmdline, cpus: b.cpus, memoryMiB: b.memoryMiB,
                  hostProfile: try HostProfile(launch: b.hostProfile), bootProtocol: proto,
                  consoleInput: headless ? nil : 0, consoleOutput: 1)
        disks = b.disks.map { Disk(path: $0.path, readOnly: $0.readOnly, overlay: $0.overlay, limit: $0.limit.limit) }
        net = b.net?.spec
        vsock = b.vsock.map { Vsock(path: $0.path, guestCID: $0.cid) }
        shares = try b.shares.map { (s) throws(MachineError) in try Share(launch: s) }
    }
}

extension RestoreOverrides {
    /// These overrides as a launch's restore half.
    public func launch(snapshot: String) -> VMMLaunch.Restore {
        VMMLaunch.Restore(snapshot: snapshot, hostProfile: hostProfile.rawValue, vsockPath: vsockPath, vsockCID: vsockCID,
                          net: net.map(VMMLaunch.Net.init), shares: shares.map(VMMLaunch.Share.init),
                          diskLimit: diskLimit.map(VMMLaunch.RateLimit.init), netRxLimit: netRxLimit.map(VMMLaunch.RateLimit.init),
                          netTxLimit: netTxLimit.map(VMMLaunch.RateLimit.init))
    }

    public init(launch r: VMMLaunch.Restore, headless: Bool) throws(MachineError) {
        self.init(vsockPath: r.vsockPath, vsockCID: r.vsockCID, net: r.net?.spec, consoleInput: headless ? nil : 0, consoleOutput: 1,
                  hostProfile: try HostProfile(launch: r.hostProfile))
        shares = try r.shares.map { (s) throws(MachineError) in try MachineConfig.Share(launch: s) }
        diskLimit = r.diskLimit?.limit
        netRxLimit = r.netRxLimit?.limit
        netTxLimit = r.netTxLimit?.limit
    }
}

extension VMMLaunch.Share {
    public init(_ share: MachineConfig.Share) {
        self.init(tag: share.tag, path: share.path, readOnly: share.options.readOnly, uid: share.options.uid,
                  gid: share.options.gid, cache: share.options.cache.rawValue)
    }
}

extension MachineConfig.Share {
    init(launch s: VMMLaunch.Share) throws(MachineError) {
        guard let cache = ShareOptions.Cache(rawValue: s.cache) else { throw .config("unknown share cache policy '\(s.cache)'") }
        self.init(tag: s.tag, path: s.path, options: ShareOptions(readOnly: s.readOnly, uid: s.uid, gid: s.gid, cache: cache))
    }
}
