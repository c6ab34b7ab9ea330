import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import KilnNet
import Sandbox
import Testing

extension String {
    var trimmingSuffixNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

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

    func makeNetwork(_ policy: EgressPolicy, resolver: String, adoptable: Bool = false) async throws -> SandboxNetwork {
        let base = runtime, upstream = IPv4Range.parseAddress(resolver)
        let result: Result<SandboxNetwork, NetworkError> = await LinuxSys.Thread.run(name: "net-setup") {
            Result { () throws(NetworkError) -> SandboxNetwork in
                try SandboxNetwork.create(policy: policy, runtimeBase: base, resolver: upstream, adoptable: adoptable)
            }
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
    /// section headed `== NAME`. The image's static busybox cannot resolve names itself (glibc's
    /// NSS in a static binary), so the script asks `nslookup` (its own DNS client) and then sends
    /// the name as a Host header (`get NAME ADDRESS`) or as the SNI of a TLS session (`tls NAME
    /// ADDRESS`: busybox's ssl_client over an nc connection).
    static let guestFunctions = """
        get() { printf 'GET / HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' "$1" | busybox nc -w 60 "$2" "${3:-80}" 2>&1; }
        tls() { busybox nc -w 60 "$2" 443 -e sh -c "exec 3<&0; printf 'GET / HTTP/1.0\\r\\nHost: $1\\r\\n\\r\\n' | busybox ssl_client -s 3 -n $1 > /tmp/tls.out 2>&1"; cat /tmp/tls.out 2>/dev/null; rm -f /tmp/tls.out; }
        resolve() { busybox nslookup "$1" 2>/dev/null | busybox awk '$1 == "Address:" && $2 !~ /:/ { print $2 }' | busybox head -1; }

        """

    static let domainScript = guestFunctions + """
        for n in allowed.test denied.test rebind.test; do echo "== dns-$n"; busybox nslookup $n 2>&1; done
        ip=$(resolve allowed.test)
        echo "== http"; get allowed.test "$ip"
        echo "== https"; tls allowed.test "$ip"
        echo "== front-http"; get allowed.test \(deniedServer)
        echo "== front-tls"; tls allowed.test \(deniedServer)
        echo "== denied-host"; get denied.test \(deniedServer)
        echo "== denied-sni"; tls denied.test \(deniedServer)
        echo "== rebind-host"; get rebind.test \(server)
        echo "== by-ip"; get \(deniedServer) \(deniedServer)
        echo "== other-port"; get denied.test \(deniedServer) 8080
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
        // Adoptable, as the service's launcher makes them: the second update below goes through
        // the helper's control socket.
        let network = try await makeNetwork(policy, resolver: Self.server, adoptable: true)
        let helper = try #require(network.helperPID)
        let veth = network.hostVeth
        do {
            let sandbox = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: runtime, network: network)
            defer { sandbox.stop() }
            let output = try await shell(sandbox, Self.domainScript)
            let s = Self.sections(output)
            #expect(s["end"] != nil, "the script ran to its end: \(output)")
            #expect(s["dns-allowed.test", default: ""].contains(Self.server), "an allowed name resolves: \(output)")
            #expect(!s["dns-denied.test", default: ""].contains(Self.deniedServer), "a denied name does not: \(output)")
            #expect(!s["dns-rebind.test", default: ""].contains("10.0.0.1"), "an answer with a private address is dropped: \(output)")
            #expect(s["http", default: ""].hasSuffix("\r\nallowed-server\n"), "HTTP to an allowed name: \(output)")
            #expect(s["https", default: ""].hasSuffix("\r\nallowed-server\n"), "HTTPS to an allowed name: \(output)")
            #expect(s["front-http", default: ""].hasSuffix("\r\nallowed-server\n"), "Host fronting reaches only the allowed name's server: \(output)")
            #expect(s["front-tls", default: ""].hasSuffix("\r\nallowed-server\n"), "SNI fronting reaches only the allowed name's server: \(output)")
            for refused in ["denied-host", "denied-sni", "rebind-host", "by-ip", "other-port"] {
                #expect(s[refused] != nil && !s[refused, default: ""].contains("-server"), "\(refused) is refused: \(output)")
            }
            // What the fake internet saw: nothing reached the denied server, and the denied name
            // was never even asked upstream (only allowed names leave the sandbox).
            #expect(web.connections(to: Self.deniedServer) == 0, "\(web.log)")
            #expect(!web.asked("denied.test") && web.asked("allowed.test") && web.asked("rebind.test"), "\(web.log)")
            #expect(web.log.filter { $0 == "conn \(Self.server):443" }.count == 2, "HTTPS and SNI fronting both went to allowed.test: \(web.log)")
            #expect(web.log.filter { $0 == "conn \(Self.server):80" }.count == 2, "HTTP and Host fronting both went to allowed.test: \(web.log)")

            // A live change: denied.test allowed from now on, without a restart.
            var widened = policy
            widened.domains.append(DomainRule("denied.test")!)
            let wider = widened
            let updated = await LinuxSys.Thread.run(name: "policy-update") {
                Result { () throws(NetworkError) in try network.updatePolicy(wider) }
            }
            try updated.get()
            let after = try await shell(sandbox, Self.guestFunctions + "resolve denied.test; get denied.test \(Self.deniedServer)")
            #expect(after.hasPrefix(Self.deniedServer + "\n") && after.hasSuffix("\r\ndenied-server\n"), "the new rule applies at once: \(after)")

            // The same change from a process that holds no handle on the helper (a restarted
            // service's launcher adopting this sandbox): through the helper's control socket,
            // back to the first policy, so denied.test is denied again.
            let base = runtime, index = network.index
            let narrowed = await LinuxSys.Thread.run(name: "policy-update") {
                Result { () throws(NetworkError) in try SandboxNetwork.updateHelper(index: index, runtimeBase: base, policy) }
            }
            try narrowed.get()
            let again = try await shell(sandbox, Self.guestFunctions + "echo \"[$(resolve denied.test)]\"; get denied.test \(Self.deniedServer)")
            #expect(again.hasPrefix("[]\n") && !again.contains("denied-server"), "the adopted update applies at once: \(again)")
        }
        // Nothing left: the helper ended with the VMM, the namespace with both.
        #expect(Self.processGone(helper), "kiln-egress \(helper) ended with its sandbox")
        #expect(Self.interfaceGone(veth), "\(veth) is gone; tasks in other network namespaces: \(Self.namespaceHolders())")
        SandboxNetwork.sweep(runtimeBase: runtime)
        #expect(access("\(runtime)/netns/kiln-\(network.index).egress", F_OK) != 0, "the sweep removed the ended helper's control socket")
    }

    /// Every task whose network namespace is not the host's (to name what keeps one alive).
    static func namespaceHolders() -> [String] {
        func link(_ path: String) -> String {
            var buffer = [CChar](repeating: 0, count: 256)
            let n = readlink(path, &buffer, buffer.count - 1)
            return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        }
        let host = link("/proc/self/ns/net")
        return TestFiles.list("/proc").filter { $0.allSatisfy(\.isNumber) }.flatMap { pid in
            TestFiles.list("/proc/\(pid)/task").compactMap { tid -> String? in
                let ns = link("/proc/\(pid)/task/\(tid)/ns/net")
                guard !ns.isEmpty, ns != host else { return nil }
                return "\(pid)/\(tid) \((TestFiles.read("/proc/\(pid)/task/\(tid)/comm") ?? "").trimmingSuffixNewline) \(ns)"
            }
        }
    }

    /// `kiln run --allow-out DOMAIN` as a user runs it: the name works, and the helper is gone after.
    @Test func runAllowOutDomainReachesTheNameAndLeavesNothing() throws {
        let web = try FakeWeb()
        let script = Self.guestFunctions + "get allowed.test $(resolve allowed.test) | busybox tail -1; get x \(Self.deniedServer) 8080"
        let run = try KilnProcess(["run", "--allow-out", "allowed.test", "--", "sh", "-c", script],
                                  environment: ["KILN_RUNTIME_DIR": runtime, "KILN_NET_RESOLVER": Self.server])
        run.closeInput()
        _ = try run.wait(seconds: Self.seconds)
        #expect(run.output.hasPrefix("allowed-server\n") && !run.output.contains("denied-server"), "\(run.output)\n\(run.errorOutput)")
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
