import Testing
import VMMProtocol

/// The launch configuration a supervisor sends its jailed VMM, and the record a detached
/// sandbox leaves: every value survives the round trip, and malformed input is refused.
@Suite struct LaunchTests {
    static let jail = JailSpec(root: "/run/kiln/jail/12-ab/root", uid: 64001, gid: 64002, openFiles: 99, fileSize: 1 << 31,
                               control: true, commands: .listener, detached: true)

    static let tenMiB = VMMLaunch.RateLimit(bandwidth: VMMLaunch.Bucket(size: 10 << 20, oneTimeBurst: 1 << 20, refillMilliseconds: 1000),
                                            operations: VMMLaunch.Bucket(size: 500, oneTimeBurst: 0, refillMilliseconds: 250))

    static let boot = VMMLaunch(
        machine: .boot(VMMLaunch.Boot(
            kernel: "/var/cache/kiln/kernel/vmlinux", initrd: nil, cmdline: "console=ttyS0 reboot=k panic=-1 quiet",
            cpus: 2, memoryMiB: 512, hostProfile: "emulated-cpl0", bootProtocol: "linux64",
            disks: [VMMLaunch.Disk(path: "/images/a,b=c ro.ext4", overlay: true, limit: tenMiB),
                    VMMLaunch.Disk(path: "data.img", readOnly: true)],
            net: VMMLaunch.Net(tap: "kiln7", mac: [2, 0x4b, 1, 2, 3, 4], host: "10.0.0.1", hostPrefix: 30, guest: "10.0.0.2",
                               txLimit: VMMLaunch.RateLimit(bandwidth: VMMLaunch.Bucket(size: 1, oneTimeBurst: 0, refillMilliseconds: 1))),
            vsock: VMMLaunch.Vsock(path: "/run/kiln/sandbox-1/vsock.sock", cid: 3),
            shares: [VMMLaunch.Share(tag: "src", path: "/home/ci/checkout, with comma", readOnly: true, uid: 1000, gid: 1001, cache: "always"),
                     VMMLaunch.Share(tag: "kiln0", path: nil)])),
        jail: jail, seccomp: "trap", headless: true, consoleLimit: 1 << 20)

    static let restore = VMMLaunch(
        machine: .restore(VMMLaunch.Restore(snapshot: "/var/cache/kiln/templates/auto-0123", hostProfile: "kvm",
                                            vsockPath: "/tmp/v.sock", vsockCID: 9, net: VMMLaunch.Net(tap: nil, mac: [2, 0, 0, 0, 0, 1]),
                                            shares: [VMMLaunch.Share(tag: "kiln1", path: "/work/out", uid: 1000, gid: 1000)],
                                            diskLimit: tenMiB, netTxLimit: VMMLaunch.RateLimit())))

    @Test func bootAndRestoreLaunchesRoundTrip() throws {
        #expect(try VMMLaunch.decode(Self.boot.encoded()) == Self.boot)
        #expect(try VMMLaunch.decode(Self.restore.encoded()) == Self.restore)
        var bare = Self.boot
        bare.jail = nil
        if case .boot(var b) = bare.machine { b.net = nil; b.vsock = nil; b.disks = []; b.initrd = "/i"; bare.machine = .boot(b) }
        #expect(try VMMLaunch.decode(bare.encoded()) == bare)
    }

    @Test func aPathWithACommaIsJustAPath() throws {
        guard case .boot(let b) = try VMMLaunch.decode(Self.boot.encoded()).machine else { Issue.record("not a boot"); return }
        #expect(b.disks.first?.path == "/images/a,b=c ro.ext4")
        #expect(b.disks.first?.overlay == true)
    }

    @Test func everyTruncationIsRefused() {
        let bytes = Self.boot.encoded()
        for n in 0..<bytes.count {
            #expect(throws: WireError.self, "\(n) of \(bytes.count) bytes") { _ = try VMMLaunch.decode(Array(bytes[0..<n])) }
        }
    }

    @Test func trailingBytesWrongMagicAndBadValuesAreRefused() {
        let good = Self.boot.encoded()
        #expect(throws: WireError.trailingBytes(1)) { _ = try VMMLaunch.decode(good + [0]) }
        var magic = good
        magic[0] = UInt8(ascii: "X")
        #expect(throws: WireError.wrongFormat(expected: "Kiln VMM launch configuration (version 4)")) { _ = try VMMLaunch.decode(magic) }
        var version = good
        version[4] = 1
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode(version) }
        var kind = good
        kind[5] = 7
        #expect(throws: WireError.invalid(field: "machine", why: "unknown kind 7")) { _ = try VMMLaunch.decode(kind) }
    }

    @Test func rateLimitBucketsOutOfRangeAreRefused() {
        for bucket in [VMMLaunch.Bucket(size: 0, oneTimeBurst: 0, refillMilliseconds: 1000),
                       VMMLaunch.Bucket(size: 1, oneTimeBurst: 0, refillMilliseconds: 0),
                       VMMLaunch.Bucket(size: 1 << 51, oneTimeBurst: 0, refillMilliseconds: 1000),
                       VMMLaunch.Bucket(size: 1, oneTimeBurst: 1 << 51, refillMilliseconds: 1000)] {
            var launch = Self.restore
            guard case .restore(var r) = launch.machine else { return }
            r.diskLimit = VMMLaunch.RateLimit(operations: bucket)
            launch.machine = .restore(r)
            #expect(throws: WireError.self, "\(bucket)") { _ = try VMMLaunch.decode(launch.encoded()) }
        }
    }

    @Test func hostileLengthsNULsAndRootJailsAreRefused() {
        // A kernel path claiming 4 GiB.
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode([0x4B, 0x56, 0x4D, 0x4C, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF]) }
        func launch(kernel: String = "/k", cpus: Int = 1, jail: JailSpec? = nil) -> [UInt8] {
            VMMLaunch(machine: .boot(VMMLaunch.Boot(kernel: kernel, initrd: nil, cmdline: "", cpus: cpus, memoryMiB: 64, hostProfile: "kvm")),
                      jail: jail).encoded()
        }
        #expect(throws: WireError.invalid(field: "boot.kernel", why: "contains a NUL byte")) { _ = try VMMLaunch.decode(launch(kernel: "/k\0/x")) }
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode(launch(cpus: 0)) }
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode(launch(cpus: 100_000)) }
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode(launch(jail: JailSpec(root: "relative/root"))) }
        #expect(throws: WireError.self) { _ = try VMMLaunch.decode(launch(jail: JailSpec(root: "/r", uid: 0))) }
        #expect(throws: Never.self) { _ = try VMMLaunch.decode(launch(jail: JailSpec(root: "/r"))) }
    }

    @Test func flippedBytesNeverCrashTheDecoder() {
        // Not a proof (Fuzz/ has FuzzLaunch for that), but every single-byte change is decoded or refused.
        let good = Self.boot.encoded()
        for i in good.indices {
            for value: UInt8 in [0, 1, 0x7F, 0xFF] {
                var bad = good
                bad[i] = value
                _ = try? VMMLaunch.decode(bad)
            }
        }
    }

    static let record = VMMRecord(pid: 4242, startTime: 123_456_789, bootID: "0f1e2d3c-aaaa-bbbb-cccc-123456789abc",
                                  jailDirectory: "/run/kiln/jail/77-beef", cgroups: ["/sys/fs/cgroup/memory/kiln/77-beef", "/sys/fs/cgroup/cpu/kiln/77-beef"],
                                  cgroupV2: false, vsockPath: "/run/kiln/sandbox-77-1-ab/vsock.sock",
                                  commandSocket: "/run/kiln/sandbox-77-1-ab/commands.sock")

    @Test func sandboxRecordRoundTripsAndRefusesDamage() throws {
        #expect(try VMMRecord.decode(Self.record.encoded()) == Self.record)
        let bytes = Self.record.encoded()
        for n in 0..<bytes.count { #expect(throws: WireError.self) { _ = try VMMRecord.decode(Array(bytes[0..<n])) } }
        var climbing = Self.record
        climbing.jailDirectory = "/run/kiln/jail/../../etc"
        #expect(throws: WireError.self) { _ = try VMMRecord.decode(climbing.encoded()) }
        var init1 = Self.record
        init1.pid = 1
        #expect(throws: WireError.self) { _ = try VMMRecord.decode(init1.encoded()) }
        #expect(throws: WireError.self) { _ = try VMMRecord.decode(Self.boot.encoded()) }
    }
}
