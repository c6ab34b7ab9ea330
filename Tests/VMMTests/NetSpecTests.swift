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
