import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import KilnNet
import Sandbox
import Synchronization
import Testing

/// Sandbox networks end to end (docs/net.md): guests restored from a template made with a network
/// device reach a fake internet through their namespace's NAT and the host's routing, within
/// their policy, and leave nothing behind. The network rule: the "internet" is a namespace this
/// test creates (198.18.0.2, the benchmarking range, routed by the host over the test's veth), and
/// 169.254.169.254 is routed into it too, so that even a broken policy reaches nothing else.
@Suite(.serialized, .blocking) struct SandboxNetworkVMTests {
    static let server = "198.18.0.2", hostSide = "198.18.0.1", port: UInt16 = 8080, hostPort: UInt16 = 8081
    let runtime = "/tmp/kiln-net-vm-tests-\(getpid())"

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        #expect(geteuid() == 0, "network namespaces need root (CI runs as root)")
    }

    /// The fake internet: a namespace behind a veth the host routes to.
    final class FakeInternet {
        let ns: NetNamespace
        let veth: String
        init() throws {
            ns = try NetNamespace(name: "kiln-inet-\(getpid())")
            veth = "kti\(getpid() % 100_000)"
            let peer = "ktn\(getpid() % 100_000)"
            try Self.ip(["link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns.name])
            try Self.ip(["addr", "add", "\(hostSide)/30", "dev", veth])
            try Self.ip(["link", "set", veth, "up"])
            try Self.ip(["route", "replace", "169.254.169.254/32", "via", server])
            try Self.ip(["-n", ns.name, "addr", "add", "\(server)/30", "dev", peer])
            try Self.ip(["-n", ns.name, "addr", "add", "169.254.169.254/32", "dev", "lo"])
            try Self.ip(["-n", ns.name, "link", "set", peer, "up"])
            try Self.ip(["-n", ns.name, "route", "add", "default", "via", hostSide])
            // Replies come back in on this veth and are forwarded to the sandbox's: forwarding on it.
            let fd = open("/proc/sys/net/ipv4/conf/\(veth)/forwarding", O_WRONLY)
            _ = write(fd, "1", 1)
            close(fd)
        }
        deinit {
            _ = try? Self.ip(["link", "del", veth])
            ns.delete()
        }
        /// Runs `nft -f -` with `script` in the fake internet's namespace; its stdout.
        @discardableResult
        func nft(_ script: String) throws -> String {
            let p = try KilnProcess(ns.exec(["nft", "-f", "-"]), executable: "ip")
            p.sendInBackground(Array(script.utf8))
            let status = try p.wait(seconds: 30)
            guard status == 0 else { throw SetupFailure(description: "nft \(script): \(p.errorOutput)") }
            return p.output
        }
        static func ip(_ args: [String]) throws {
            let p = try KilnProcess(args, executable: "ip")
            p.closeInput()
            let status = try p.wait(seconds: 30)
            guard status == 0 else { throw SetupFailure(description: "ip \(args.joined(separator: " ")): \(p.errorOutput)") }
        }
    }

    static let kernel = "/var/cache/kiln/kernel/vmlinux"
    static let image = "/var/cache/kiln/images/default.ext4"

    /// The default image's template with a network device, made (one boot) with a first network.
    func template() async throws -> String {
        var config = Sandbox.Configuration(kernelPath: Self.kernel, imagePath: Self.image)
        config.runtimeDirectory = runtime
        let network = try await makeNetwork(EgressPolicy(internet: false))
        config.network = network
        let name = Templates.autoName(for: config)
        if Templates.usable(name) { network.close() } else { try await Templates.create(name, config: config).stop() }
        return Templates.path(name)
    }

    func makeNetwork(_ policy: EgressPolicy) async throws -> SandboxNetwork {
        let base = runtime
        let result: Result<SandboxNetwork, NetworkError> = await LinuxSys.Thread.run(name: "net-setup") {
            Result { () throws(NetworkError) -> SandboxNetwork in try SandboxNetwork.create(policy: policy, runtimeBase: base) }
        }
        return try result.get()
    }

    /// Runs `busybox nc` to `address:port` in the guest; true when it connected and read the server's line.
    /// `-w 60` (here and in the other network tests): a guest's first connection after its boot
    /// costs 8-10 s of emulated kernel time, more under load (docs/net.md, "A fresh sandbox's first
    /// connection"; templates now pay it before their snapshot); a refused one still fails at once
    /// (the policy answers with a reset).
    func call(_ sandbox: Sandbox, _ address: String, _ port: UInt16) async throws -> (ok: Bool, output: String) {
        let p = try await sandbox.agent.exec(Exec(argv: ["busybox", "nc", "-w", "60", address, "\(port)"], environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let (out, err, status) = try await p.collect()
        let text = String(decoding: out + err, as: UTF8.self)
        if case .exited(0) = status.termination { return (text.contains("internet-hello"), text) }
        return (false, text)
    }

    /// Answers every connection on `listener` with one line, on a thread, until `stop()`.
    final class Server: Sendable {
        final class State: Sendable { let value = Mutex((stopped: false, connections: 0)) }
        let listener: Int32
        let state = State()
        let thread: LinuxSys.Thread
        init(_ listener: Int32) throws {
            self.listener = listener
            let state = self.state
            thread = try LinuxSys.Thread.spawn(name: "fake-server") {
                while !state.value.withLock({ $0.stopped }) {
                    guard let c = try? TCP.accept(listener, seconds: 0.5) else { continue }
                    state.value.withLock { $0.connections += 1 }
                    _ = TCP.write(c, Array("internet-hello\n".utf8))
                    close(c)
                }
            }
        }
        var connections: Int { state.value.withLock { $0.connections } }
        func stop() {
            state.value.withLock { $0.stopped = true }
            thread.join()
            close(listener)
        }
    }

    static func interfaceGone(_ name: String) -> Bool {
        for _ in 0..<100 where if_nametoindex(name) != 0 { usleep(100_000) }
        return if_nametoindex(name) == 0
    }

    @Test func egressReachesTheFakeInternetWithinPolicyAndLeavesNothing() async throws {
        let internet = try FakeInternet()
        let server = try Server(try internet.ns.run { try TCP.listen(port: Self.port) })
        defer { server.stop() }
        let host = try Server(try TCP.listen(port: Self.hostPort))
        defer { host.stop() }
        let snapshot = try await template()
        var veths: [String] = []

        // Open egress: the fake internet answers; the metadata address and the host do not.
        let open = try await makeNetwork(EgressPolicy(internet: true))
        print("sandbox network setup (namespace, veth, TAP, nftables): \(Int(open.setupSeconds * 1000)) ms")
        veths.append(open.hostVeth)
        do {
            let a = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, network: open)
            defer { a.stop() }
            let reached = try await call(a, Self.server, Self.port)
            #expect(reached.ok, "\(reached.output)\n\(a.consoleTail())")
            let metadata = try await call(a, "169.254.169.254", Self.port)
            #expect(!metadata.ok, "169.254.169.254 must be unreachable: \(metadata.output)")
            for own in [Self.hostSide, IPv4Range.format(open.hostAddress)] {
                let r = try await call(a, own, Self.hostPort)
                #expect(!r.ok, "the host's own address \(own) must be unreachable: \(r.output)")
            }
            #expect(server.connections <= 1 && host.connections == 0, "nothing denied reached a listener")
            let resolv = try await a.agent.readFile("/etc/resolv.conf")
            #expect(String(decoding: resolv.contents, as: UTF8.self) == SandboxNetwork.resolvConf)
            // A spoofed source: the guest gives itself another address and pings from it, then
            // from its own. The fake internet counts the echo requests that arrive: only the
            // genuine one (without the namespace's guard chain the spoofed ones leave by NAT too).
            try internet.nft("add table ip kilntest\nadd chain ip kilntest in { type filter hook input priority 0; }\n"
                             + "add rule ip kilntest in icmp type echo-request counter\n")
            let spoofed = try await shell(a, "ip addr add 100.127.255.9/32 dev eth0; ping -c 3 -W 2 -I 100.127.255.9 \(Self.server);"
                                             + " ping -c 1 -W 5 \(Self.server); echo rc=$?")
            let arrived = try internet.nft("list table ip kilntest")
            #expect(arrived.contains("counter packets 1 "), "only the genuine echo request arrived: \(arrived)\n\(spoofed)")
        }

        // A denied range is refused.
        let denied = try await makeNetwork(EgressPolicy(internet: true, deny: [IPv4Range("198.18.0.0/15")!]))
        veths.append(denied.hostVeth)
        do {
            let b = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, network: denied)
            defer { b.stop() }
            let r = try await call(b, Self.server, Self.port)
            #expect(!r.ok, "a denied CIDR must be refused: \(r.output)")
        }

        // No internet, one address allowed: only that one.
        let allowOnly = try await makeNetwork(EgressPolicy(internet: false, allow: [IPv4Range(Self.server)!]))
        veths.append(allowOnly.hostVeth)
        do {
            let c = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, network: allowOnly)
            defer { c.stop() }
            let r = try await call(c, Self.server, Self.port)
            #expect(r.ok, "an allowed address is reachable without internet: \(r.output)")
            let other = try await call(c, Self.hostSide, Self.hostPort)
            #expect(!other.ok)
            #expect(host.connections == 0)
        }

        // Without a network (the default template): nothing.
        let plain = try await DetachedSandboxTests.template()
        do {
            let d = try await Sandbox.restore(snapshot: plain, runtimeDirectory: runtime)
            defer { d.stop() }
            let r = try await call(d, Self.server, Self.port)
            #expect(!r.ok, "a sandbox without a network reaches nothing: \(r.output)")
        }

        // Nothing left: each namespace went with its VMM (and its veth, TAP and rules with it).
        for veth in veths { #expect(Self.interfaceGone(veth), "\(veth) is gone") }
        #expect(directoryEntries(runtime + "/netns").filter { $0.hasPrefix("kiln-") }.isEmpty)
        SandboxNetwork.sweep(runtimeBase: runtime)
    }

    /// -p: a host connection to 127.0.0.1:HOSTPORT reaches a listener in a guest with no network.
    @Test func portForwardReachesAGuestListenerOverVsock() async throws {
        let sandbox = try await Sandbox.restore(snapshot: try await DetachedSandboxTests.template(), runtimeDirectory: runtime)
        defer { sandbox.stop() }
        let hostPort = UInt16(20000 + getpid() % 20000)
        let forward = try PortForward(PortForward.Mapping(hostPort: hostPort, guestPort: 7001), sandbox: sandbox)
        defer { forward.stop() }
        let listener = try await sandbox.agent.exec(Exec(argv: ["busybox", "nc", "-l", "-p", "7001", "-e", "busybox", "echo", "guest-reply"],
                                                         environment: ["PATH=/bin:/usr/bin"]))
        listener.closeStdin()
        // The guest's listener may not be up yet: a relay that finds nothing closes at once; retry.
        var reply = ""
        for _ in 0..<20 where reply.isEmpty {
            let reached = try await LinuxSys.Thread.run(name: "port-client") { () -> Result<String, any Error> in
                Result {
                    let fd = try TCP.connect("127.0.0.1", hostPort, seconds: 10)
                    defer { close(fd) }
                    return String(decoding: TCP.read(fd, upTo: 100, seconds: 60), as: UTF8.self)
                }
            }.get()
            reply = reached
            if reply.isEmpty { try await Task.sleep(nanoseconds: 1_000_000_000) }
        }
        #expect(reply == "guest-reply\n", "console: \(sandbox.consoleTail())")
    }
}

private func directoryEntries(_ dir: String) -> [String] {
    guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
    return names
}

struct SetupFailure: Error, CustomStringConvertible { let description: String }
