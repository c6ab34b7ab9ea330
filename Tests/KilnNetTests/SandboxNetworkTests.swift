import Glibc
import KilnTestSupport
@testable import KilnNet
import Synchronization
import Testing

/// IPv4 ranges and the policy's ruleset: pure, no root needed.
@Suite struct EgressPolicyTests {
    @Test func rangesParseAndContain() throws {
        let r = try #require(IPv4Range("10.1.2.3/8"))
        #expect(r.description == "10.0.0.0/8")
        #expect(r.contains(IPv4Range.parseAddress("10.255.0.1")!))
        #expect(!r.contains(IPv4Range.parseAddress("11.0.0.1")!))
        #expect(IPv4Range("169.254.169.254")?.description == "169.254.169.254")
        for bad in ["", "1.2.3", "1.2.3.4/33", "1.2.3.256", "a.b.c.d", "1.2.3.4/", "1.2.3.4/-1", " 1.2.3.4"] {
            #expect(IPv4Range(bad) == nil, "\(bad)")
        }
        #expect(throws: NetworkError.self) { try EgressPolicy.range("example.com") }
    }

    @Test func alwaysDeniedCoversMetadataLoopbackAndPrivateRanges() {
        for address in ["169.254.169.254", "127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0"] {
            let a = IPv4Range.parseAddress(address)!
            #expect(EgressPolicy.alwaysDenied.contains { $0.contains(a) }, "\(address)")
        }
        for address in ["198.18.0.2", "1.1.1.1", "8.8.8.8"] {
            let a = IPv4Range.parseAddress(address)!
            #expect(!EgressPolicy.alwaysDenied.contains { $0.contains(a) }, "\(address)")
        }
    }

    @Test func aPolicyCrossesToTheLauncherUnchanged() {
        let policy = EgressPolicy(internet: false, allow: [IPv4Range("198.18.0.2/32")!, IPv4Range("1.2.3.0/24")!],
                                  deny: [IPv4Range("0.0.0.0/0")!])
        #expect(EgressPolicy.parseFile(policy.file(hostAddresses: []))?.policy == policy)
        #expect(EgressPolicy.parseFile(EgressPolicy().file(hostAddresses: []))?.policy == EgressPolicy())
        #expect(EgressPolicy.parseFile("internet 1\nallow 300.0.0.0/8") == nil)
        #expect(EgressPolicy.parseFile("internet 1\npath /etc") == nil)
    }

    @Test func rulesetAllowsBeforeItDeniesAndEndsByThePolicy() {
        let open = EgressPolicy(internet: true, allow: [IPv4Range("10.9.0.0/16")!], deny: [IPv4Range("198.18.0.0/15")!])
        let text = open.ruleset(tap: "kiln-tap", uplink: "kiln-n0", gateway: SandboxNetwork.gatewayAddress,
                                resolver: IPv4Range.parseAddress("192.0.2.53"), hostAddresses: [IPv4Range.parseAddress("192.0.2.2")!])
        let allow = text.firstRange(of: "ip daddr @allow accept")!, deny = text.firstRange(of: "ip daddr @deny")!
        #expect(allow.lowerBound < deny.lowerBound)
        #expect(text.contains("10.9.0.0/16") && text.contains("198.18.0.0/15") && text.contains("192.0.2.2"))
        #expect(text.contains("dnat ip to 192.0.2.53"))
        // A spoofed source is dropped before conntrack and NAT see it.
        let guardChain = text.firstRange(of: "chain guard")!, prerouting = text.firstRange(of: "chain prerouting")!
        #expect(guardChain.lowerBound < prerouting.lowerBound && text.contains("priority raw; policy accept;"))
        #expect(text.contains("iifname \"kiln-tap\" ip saddr != 100.127.255.2 drop"))
        let closed = EgressPolicy(internet: false).ruleset(tap: "kiln-tap", uplink: "kiln-n0", gateway: SandboxNetwork.gatewayAddress,
                                                           resolver: nil, hostAddresses: [])
        #expect(!closed.contains("dnat ip to"))
        #expect(!closed.split(separator: "\n").contains(where: { String($0).trimmed() == "accept" }))
    }
}

final class Flag: Sendable {
    private let state = Mutex(false)
    func set() { state.withLock { $0 = true } }
    var value: Bool { state.withLock { $0 } }
}

/// Real namespaces, veths and nftables on this host (root). No traffic is sent.
@Suite(.serialized, .blocking) struct SandboxNetworkTests {
    let base = "/tmp/kiln-net-tests-\(getpid())"

    init() {
        #expect(geteuid() == 0, "network namespaces need root (CI runs as root)")
    }

    static func interfaceExists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// Waits (the kernel frees a namespace in the background) until `name` is gone.
    static func waitGone(_ name: String) -> Bool {
        // Up to a minute: netns cleanup runs in a kernel workqueue, slow on a loaded host.
        for _ in 0..<600 where interfaceExists(name) { usleep(100_000) }
        return !interfaceExists(name)
    }

    static func sh(_ command: String) -> (status: Int32, output: String) {
        guard let p = try? KilnProcess(["-c", command + " 2>&1"], executable: "sh") else { return (-1, "") }
        p.closeInput()
        let status = (try? p.wait(seconds: 30)) ?? -1
        return (status, p.output)
    }

    @Test func createsTheNamespaceAndRemovesEverythingWhenNothingHoldsIt() throws {
        let network = try SandboxNetwork.create(policy: EgressPolicy(), runtimeBase: base)
        #expect(Self.interfaceExists(network.hostVeth))
        #expect(access(network.namespacePath, F_OK) == 0)
        let inside = Self.sh("nsenter --net=\(network.namespacePath) sh -c 'ip -4 -o addr; nft list table inet kiln'")
        #expect(inside.status == 0, "\(inside.output)")
        #expect(inside.output.contains("kiln-tap") && inside.output.contains("100.127.255.1/30"), "\(inside.output)")
        #expect(inside.output.contains("set deny") && inside.output.contains("169.254.0.0/16"), "\(inside.output)")
        #expect(SandboxNetwork.hostTableExists(), "the host NAT table")
        print("sandbox network setup: \(Int(network.setupSeconds * 1000)) ms")

        network.close()
        #expect(access(network.namespacePath, F_OK) != 0)
        #expect(Self.waitGone(network.hostVeth), "the veth goes with the namespace")
        SandboxNetwork.sweep(runtimeBase: base)
        if !Routes.interfaces().contains(where: { $0.hasPrefix(SandboxNetwork.hostVethPrefix) }) {
            #expect(!SandboxNetwork.hostTableExists(), "the sweep removes the host's table once unused")
        }
    }

    /// The egress helper takes a burst of connections at once (a thread each): 32 DNS-over-TCP
    /// connections held open together from inside the sandbox's namespace, then a question on
    /// another is answered and the helper still runs. Before malloc's arenas were capped, the
    /// ninth thread's first allocation made glibc open /sys/devices/system/cpu/online and the
    /// helper's seccomp filter killed it (SIGSYS): every name and proxied connection of the
    /// sandbox stopped with it.
    @Test func theEgressHelperSurvivesABurstOfConnections() throws {
        let policy = EgressPolicy(internet: false, domains: [DomainRule("allowed.test")!])
        let network = try SandboxNetwork.create(policy: policy, runtimeBase: base)
        defer { network.close() }
        let helper = try #require(network.helperPID)
        let script = """
            import socket, struct, time
            held = []
            for i in range(32):
                s = socket.create_connection(("100.127.255.1", 53), timeout=10)
                s.sendall(b"\\x00")
                held.append(s)
            time.sleep(1)
            q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\x06denied\\x04test\\x00" + struct.pack(">HH", 1, 1)
            s = socket.create_connection(("100.127.255.1", 53), timeout=10)
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            print("rcode", s.recv(n)[3] & 15)
            """
        let r = Self.sh("nsenter --net=\(network.namespacePath) python3 -c '\(script)'")
        #expect(r.output == "rcode 3\n", "a denied name's NXDOMAIN after the burst: \(r.output)")
        #expect(kill(helper, 0) == 0, "the helper still runs")
    }

    @Test func sweepRemovesWhatAKilledCreatorLeft() throws {
        let network = try SandboxNetwork.create(policy: EgressPolicy(internet: false), runtimeBase: base)
        // As a SIGKILLed kiln leaves it: the name still mounted, its owner gone.
        let child = try KilnProcess(["-c", "exit 0"], executable: "sh")
        let dead = child.pid
        _ = try child.wait(seconds: 30)
        #expect(Files.write(network.namespacePath + ".owner", "\(dead)\n"))
        SandboxNetwork.sweep(runtimeBase: base)
        #expect(access(network.namespacePath, F_OK) != 0)
        #expect(Self.waitGone(network.hostVeth))
    }

    /// The service's networks (docs/net.md, "Networks in the service"): its launcher's side
    /// names one, changes its rules in place and gives it back.
    @Test func aNamedNetworksPolicyChangesInPlaceAndReleaseRemovesIt() throws {
        let network = try SandboxNetwork.create(policy: EgressPolicy(internet: false), runtimeBase: base)
        // What the service holds: a handle whose name stays until it is given back.
        let released = Flag()
        let handle = SandboxNetwork.named(index: network.index, policy: network.policy, runtimeBase: base) { released.set() }
        handle.detachName()
        #expect(access(handle.namespacePath, F_OK) == 0, "a named network keeps its name while it runs")
        let table = { Self.sh("nsenter --net=\(handle.namespacePath) nft list table inet kiln").output }
        #expect(!table().contains("198.18.0.2"))
        try SandboxNetwork.replacePolicy(index: network.index, runtimeBase: base,
                                         EgressPolicy(internet: false, allow: [IPv4Range("198.18.0.2/32")!]))
        #expect(table().contains("198.18.0.2"), "\(table())")
        #expect(table().split(separator: "\n").filter { $0.contains("table inet kiln") }.count == 1, "one table, replaced")
        // A request naming no network is refused with one line, the host untouched.
        #expect(throws: NetworkError.self) { try SandboxNetwork.replacePolicy(index: 4000, runtimeBase: base, EgressPolicy()) }
        handle.close()
        #expect(released.value)
        SandboxNetwork.release(index: network.index, runtimeBase: base)
        #expect(access(handle.namespacePath, F_OK) != 0)
        #expect(Self.waitGone(network.hostVeth))
    }

    @Test func addressesComeFromThePoolOnePerSandbox() throws {
        let a = try SandboxNetwork.create(policy: EgressPolicy(), runtimeBase: base)
        defer { a.close() }
        let b = try SandboxNetwork.create(policy: EgressPolicy(), runtimeBase: base)
        defer { b.close() }
        #expect(a.index != b.index)
        #expect(SandboxNetwork.pool.contains(a.hostAddress) && SandboxNetwork.pool.contains(b.namespaceAddress))
        #expect(a.hostAddress / 4 != b.hostAddress / 4)
    }
}
