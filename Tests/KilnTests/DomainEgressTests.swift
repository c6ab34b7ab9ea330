import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import KilnNet
import Sandbox
import Testing

/// Domain rules end to end (docs/net.md, "Domains"), in the same serialized suite and fake
/// internet as the other network tests, with names: a resolver and web servers in the fake
/// internet's namespace (Tests/net/fake-web.py). `allowed.test` is 198.18.0.2, `denied.test`
/// 198.18.1.2, `rebind.test` a private address; nothing else is ever addressed.
extension SandboxNetworkVMTests {
    static let deniedServer = "198.18.1.2"

    /// The fake internet with names: its resolver and HTTP/HTTPS servers, and what they saw.
    final class FakeWeb {
        let internet: FakeInternet
        let directory: String
        let process: KilnProcess

        init() throws {
            internet = try FakeInternet()
            directory = try TestImages.temporaryDirectory("kiln-fake-web")
            _ = try TestImages.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=allowed.test",
                                    "-addext", "subjectAltName=DNS:allowed.test,DNS:denied.test", "-days", "2",
                                    "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem"])
            try FakeInternet.ip(["-n", internet.ns.name, "addr", "add", "\(SandboxNetworkVMTests.deniedServer)/32", "dev", "lo"])
            // Gone with the fake internet's veth.
            try FakeInternet.ip(["route", "replace", "198.18.1.0/24", "via", SandboxNetworkVMTests.server])
            var script = #filePath // <root>/Tests/KilnTests/DomainEgressTests.swift
            for _ in 0..<2 { script = String(script[..<script.lastIndex(of: "/")!]) }
            process = try KilnProcess(internet.ns.exec(["python3", script + "/net/fake-web.py", directory]), executable: "ip")
            process.closeInput()
            try process.waitForLine("ready", seconds: 60)
        }

        deinit {
            kill(process.pid, SIGKILL)
            _ = try? process.wait(seconds: 10)
        }

        var log: [String] { (TestFiles.read(directory + "/log") ?? "").split(separator: "\n").map(String.init) }
        func connections(to address: String) -> Int { log.filter { $0.hasPrefix("conn \(address):") }.count }
        func asked(_ name: String) -> Bool { log.contains { $0.hasPrefix("dns \(name) ") } }
    }

    func makeNetwork(_ policy: EgressPolicy, resolver: String) async throws -> SandboxNetwork {
        let base = runtime, upstream = IPv4Range.parseAddress(resolver)
        let result: Result<SandboxNetwork, NetworkError> = await LinuxSys.Thread.run(name: "net-setup") {
            Result { () throws(NetworkError) -> SandboxNetwork in try SandboxNetwork.create(policy: policy, runtimeBase: base, resolver: upstream) }
        }
        return try result.get()
    }

    /// Runs `script` with the guest's sh; its stdout and stderr together.
    func shell(_ sandbox: Sandbox, _ script: String) async throws -> String {
        let p = try await sandbox.agent.exec(Exec(argv: ["sh", "-c", script], environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let (out, err, _) = try await p.collect()
        return String(decoding: out + err, as: UTF8.self)
    }

    /// The guest's checks in one script (a guest process costs about a second here), each
    /// section headed `== NAME`.
    static let domainScript = """
        for n in allowed.test denied.test rebind.test; do echo "== dns-$n"; busybox nslookup $n 2>&1; done
        echo "== http"; busybox wget -q -T 20 -O - http://allowed.test/ 2>&1
        echo "== https"; busybox wget -q -T 20 -O - https://allowed.test/ 2>&1
        echo "== http-denied-name"; busybox wget -q -T 20 -O - http://denied.test/ 2>&1
        echo "== front-http"; printf 'GET / HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n' | busybox nc -w 20 \(deniedServer) 80 2>&1
        echo "== denied-host"; printf 'GET / HTTP/1.0\\r\\nHost: denied.test\\r\\n\\r\\n' | busybox nc -w 20 \(deniedServer) 80 2>&1
        echo "== rebind-host"; printf 'GET / HTTP/1.0\\r\\nHost: rebind.test\\r\\n\\r\\n' | busybox nc -w 20 \(server) 80 2>&1
        echo "== front-tls"; busybox nc -w 20 \(deniedServer) 443 < /tmp/hello > /dev/null 2>&1
        echo "== by-ip"; busybox wget -q -T 20 -O - http://\(deniedServer)/ 2>&1
        echo "== other-port"; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 20 \(deniedServer) 8080 2>&1
        echo "== end"
        """

    static func sections(_ output: String) -> [String: String] {
        var out: [String: String] = [:], current = ""
        for line in output.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("== ") { current = String(line.dropFirst(3)); out[current] = "" } else { out[current, default: ""] += line + "\n" }
        }
        return out
    }

    static func processGone(_ pid: pid_t) -> Bool {
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(100_000) }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    @Test func domainRulesResolveAndProxyOnlyAllowedNamesToTheirOwnAddresses() async throws {
        let web = try FakeWeb()
        let snapshot = try await template()
        let policy = EgressPolicy(internet: false, domains: [DomainRule("allowed.test")!, DomainRule("rebind.test")!])
        let network = try await makeNetwork(policy, resolver: Self.server)
        let helper = try #require(network.helperPID)
        let veth = network.hostVeth
        do {
            let sandbox = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, network: network)
            defer { sandbox.stop() }
            _ = try await sandbox.agent.writeFile("/tmp/hello", contents: TLSClientHello.bytes(sni: "allowed.test"))
            let output = try await shell(sandbox, Self.domainScript)
            let s = Self.sections(output)
            #expect(s["end"] != nil, "the script ran to its end: \(output)")
            #expect(s["dns-allowed.test", default: ""].contains(Self.server), "an allowed name resolves: \(output)")
            #expect(!s["dns-denied.test", default: ""].contains(Self.deniedServer), "a denied name does not: \(output)")
            #expect(!s["dns-rebind.test", default: ""].contains("10.0.0.1"), "an answer with a private address is dropped: \(output)")
            #expect(s["http"] == "allowed-server\n", "HTTP to an allowed name: \(output)")
            #expect(s["https"] == "allowed-server\n", "HTTPS to an allowed name: \(output)")
            #expect(!s["http-denied-name", default: ""].contains("server"), "\(output)")
            #expect(s["front-http"] == "allowed-server\n", "Host fronting reaches only the allowed name's own server: \(output)")
            #expect(!s["denied-host", default: ""].contains("server"), "a denied Host is closed: \(output)")
            #expect(!s["rebind-host", default: ""].contains("server"), "a name resolving to a private address is not dialled: \(output)")
            #expect(!s["by-ip", default: ""].contains("server") && !s["other-port", default: ""].contains("server"), "\(output)")
            // What the fake internet saw: nothing reached the denied server, and the denied name
            // was never even asked upstream (only allowed names leave the sandbox).
            #expect(web.connections(to: Self.deniedServer) == 0, "\(web.log)")
            #expect(!web.asked("denied.test") && web.asked("allowed.test") && web.asked("rebind.test"), "\(web.log)")
            let tlsFronted = web.log.filter { $0 == "conn \(Self.server):443" }.count
            #expect(tlsFronted == 2, "the HTTPS request and the fronted ClientHello both went to allowed.test's address: \(web.log)")

            // A live change: denied.test allowed from now on, without a restart.
            var widened = policy
            widened.domains.append(DomainRule("denied.test")!)
            let wider = widened
            let updated = await LinuxSys.Thread.run(name: "policy-update") {
                Result { () throws(NetworkError) in try network.updatePolicy(wider) }
            }
            try updated.get()
            let after = try await shell(sandbox, "busybox nslookup denied.test 2>&1; busybox wget -q -T 20 -O - http://denied.test/ 2>&1")
            #expect(after.contains(Self.deniedServer) && after.contains("denied-server\n"), "the new rule applies at once: \(after)")
        }
        // Nothing left: the helper ended with the VMM, the namespace with both.
        #expect(Self.processGone(helper), "kiln-egress \(helper) ended with its sandbox")
        #expect(Self.interfaceGone(veth), "\(veth) is gone")
        SandboxNetwork.sweep(runtimeBase: runtime)
    }

    /// `kiln run --allow-out DOMAIN` as a user runs it: the name works, and the helper is gone after.
    @Test func runAllowOutDomainReachesTheNameAndLeavesNothing() throws {
        let web = try FakeWeb()
        let run = try KilnProcess(["run", "--allow-out", "allowed.test", "--", "sh", "-c",
                                   "busybox wget -q -T 20 -O - http://allowed.test/; busybox wget -q -T 20 -O - http://\(Self.deniedServer)/"],
                                  environment: ["KILN_RUNTIME_DIR": runtime, "KILN_NET_RESOLVER": Self.server])
        run.closeInput()
        let status = try run.wait(seconds: Self.seconds)
        #expect(run.output == "allowed-server\n", "\(run.errorOutput)")
        #expect(status != 0, "the second request, to a denied address, fails")
        #expect(web.connections(to: Self.deniedServer) == 0)
        var helpers: [String] = []
        for _ in 0..<100 {
            helpers = TestFiles.list("/proc").filter { $0.allSatisfy(\.isNumber) }.filter { pid in
                let cmdline = (TestFiles.read("/proc/\(pid)/cmdline") ?? "").split(separator: "\0")
                return cmdline.first?.hasSuffix(EgressHelper.executableName) == true && cmdline.contains("\(run.pid)")
            }
            if helpers.isEmpty { break }
            usleep(100_000)
        }
        #expect(helpers.isEmpty, "kiln-egress of kiln run \(run.pid) left: \(helpers)")
    }
}
