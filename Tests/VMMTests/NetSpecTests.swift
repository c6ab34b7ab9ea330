import Devices
import Testing
@testable import VMM

@Suite struct NetSpecTests {
    @Test func fullSpecParsesAndBecomesAnIPParameter() throws {
        let spec = try NetSpec.parse("tap=kilntest0,mac=02:aa:bb:cc:dd:0e,host=10.200.7.1/24,guest=10.200.7.2")
        #expect(spec.tap == "kilntest0")
        #expect(spec.mac == [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
        #expect(spec.macString == "02:aa:bb:cc:dd:0e")
        #expect(spec.kernelParameter == "ip=10.200.7.2::10.200.7.1:255.255.255.0::eth0:off")
    }

    @Test func autoTapGetsALocallyAdministeredMACAndNoAddresses() throws {
        let spec = try NetSpec.parse("tap=auto")
        #expect(spec.tap == nil)
        #expect(spec.mac[0] == 0x02)
        #expect(spec.kernelParameter == nil)
    }

    @Test func netDeviceFollowsTheDisksAndItsParameterJoinsTheCommandLine() throws {
        var config = MachineConfig(kernelPath: "/k", hostProfile: .kvm)
        config.disks = [.init(path: "/d")]
        config.net = try NetSpec.parse("tap=auto,host=192.168.5.1/30,guest=192.168.5.2")
        #expect(config.virtioDevices == [.block(.init(path: "/d")), .net(config.net!)])
        #expect(config.effectiveCmdline.hasSuffix("ip=192.168.5.2::192.168.5.1:255.255.255.252::eth0:off"))
    }

    @Test(arguments: ["", "tap=", "mac=02:00:00:00:00:01", "tap=x,mac=01:00:00:00:00:01", "tap=x,mac=02:00:00:00:00",
                      "tap=x,host=10.0.0.1/24", "tap=x,guest=10.0.0.2", "tap=x,host=10.0.0.1,guest=10.0.0.2",
                      "tap=x,host=10.0.0.300/24,guest=10.0.0.2", "tap=x,speed=fast", "tap=a-name-far-too-long"])
    func badSpecsAreRefused(_ text: String) {
        #expect(throws: NetSpec.ParseError.self) { try NetSpec.parse(text) }
    }
}

@Suite struct RateLimitSpecTests {
    @Test func aRateTextBecomesPerSecondBuckets() {
        let l = RateLimitOptions.parse("10M,ops=500,burst=1G,ops-burst=100")
        #expect(l == RateLimit(bandwidth: .init(size: 10 << 20, oneTimeBurst: 1 << 30), operations: .init(size: 500, oneTimeBurst: 100)))
        #expect(RateLimitOptions.parse("ops=20") == RateLimit(operations: .init(size: 20)))
        #expect(RateLimitOptions.parse("0") == .unlimited, "0: no limit (a clone dropping its template's)")
        #expect(RateLimitOptions.parse("rate=4096,rate-refill-ms=250")?.bandwidth == .init(size: 4096, refillMilliseconds: 250))
    }

    @Test(arguments: ["", "fast", "-1", "10M,", "burst=5", "10M,ops=0", "10X", "2000000P", "10M,speed=1", "10M,ops", "1125899906842625"])
    func badRateTextsAreRefused(_ text: String) {
        #expect(RateLimitOptions.parse(text) == nil, "'\(text)'")
    }

    @Test func diskAndNetSpecsCarryLimitsAndPrintThemBack() throws {
        let disk = try #require(MachineConfig.Disk.parse("/img,overlay,rate=1M,ops=100"))
        #expect(disk.overlay && disk.limit == RateLimit(bandwidth: .init(size: 1 << 20), operations: .init(size: 100)))
        #expect(MachineConfig.Disk.parse(disk.specString) == disk)
        #expect(MachineConfig.Disk.parse("/img,rate=0") == nil)
        let net = try NetSpec.parse("tap=auto,rate=1M,tx-ops=50")
        #expect(net.rxLimit == RateLimit(bandwidth: .init(size: 1 << 20)))
        #expect(net.txLimit == RateLimit(bandwidth: .init(size: 1 << 20), operations: .init(size: 50)), "rate= is each direction's")
        #expect(try NetSpec.parse(net.specString) == net)
        #expect(throws: NetSpec.ParseError.self) { try NetSpec.parse("tap=auto,rx-burst=5") }
    }

    @Test func aSnapshotsConfigurationKeepsTheLimits() throws {
        var config = MachineConfig(kernelPath: "/k", hostProfile: .kvm)
        config.disks = [MachineConfig.Disk.parse("/img,overlay,rate=2M")!]
        config.net = try NetSpec.parse("tap=auto,mac=02:00:00:00:00:07,rx-rate=3M")
        let saved = try MachineConfig(snapshotText: config.snapshotText)
        #expect(saved.disks == config.disks && saved.net == config.net)
    }
}
