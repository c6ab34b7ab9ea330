import Glibc
import KilnTestSupport
import KilnNet
import Testing

/// Bad network options are refused in one line naming the option, exit 2, before anything
/// starts (the rule of ValidationTests, for the options of docs/net.md).
@Suite(.blocking) struct RunNetCommandTests {
    static let badInputs: [(arguments: [String], option: String)] = [
        (["run", "--allow-out", "10.0.0.0/33", "--", "true"], "--allow-out"),
        (["run", "--allow-out", "exa mple.com", "--", "true"], "--allow-out"),
        (["run", "--allow-out", "*.", "--", "true"], "--allow-out"),
        (["run", "--net", "--deny-out", "example.com", "--", "true"], "--deny-out"),
        (["run", "--net", "--deny-out", "1.2.3", "--", "true"], "--deny-out"),
        (["run", "--deny-out"], "--deny-out"),
        (["run", "-p", "80", "-p", "8080:0", "--", "true"], "--publish"),
        (["run", "--publish", "x:80", "--", "true"], "--publish"),
        (["run", "-p", "70000:80", "--", "true"], "--publish"),
        (["run", "--net", "--no-jail", "--", "true"], "--net"),
    ]

    @Test(arguments: badInputs)
    func badNetworkOptionIsOneLineAndExit2(_ arguments: [String], _ option: String) throws {
        let runtime = ValidationTests.runtimeDirectory()
        defer { rmdir(runtime) }
        let kiln = try KilnProcess(arguments, environment: ["KILN_RUNTIME_DIR": runtime])
        kiln.closeInput()
        let status = try kiln.wait(seconds: 60)
        let stderr = kiln.errorOutput
        #expect(status == 2, "\(arguments): \(stderr)")
        #expect(stderr.hasPrefix("kiln: ") && stderr.dropLast().split(separator: "\n").count == 1, "\(arguments): \(stderr)")
        #expect(stderr.contains(option), "\(arguments): \(stderr)")
        #expect(kiln.output.isEmpty && ValidationTests.entries(runtime).isEmpty)
    }
}

/// `kiln run --net`, `--deny-out` and `-p` as a user runs them, against the same fake internet
/// (a namespace the test creates; nothing else is ever addressed), in the same serialized suite.
extension SandboxNetworkVMTests {
    static let seconds = 600.0

    func kiln(_ args: [String]) throws -> KilnProcess {
        try KilnProcess(["run"] + args, environment: ["KILN_RUNTIME_DIR": runtime])
    }

    @Test func netReachesTheFakeInternetDenyOutRefusesItAndAKilledKilnLeavesNothing() throws {
        let internet = try Self.FakeInternet()
        let server = try Self.Server(try internet.ns.run { try TCP.listen(port: Self.port) })
        defer { server.stop() }
        let call = ["busybox", "nc", "-w", "60", Self.server, "\(Self.port)"]

        // The first run boots and saves the template (or restores it); later runs restore it.
        let open = try kiln(["--net", "--"] + call)
        open.closeInput()
        #expect(try open.wait(seconds: Self.seconds) == 0, "\(open.errorOutput)")
        #expect(open.output == "internet-hello\n")

        let denied = try kiln(["--net", "--deny-out", "198.18.0.0/15", "--"] + call)
        denied.closeInput()
        #expect(try denied.wait(seconds: Self.seconds) != 0)
        #expect(!denied.output.contains("internet-hello"))

        let none = try kiln(["--"] + call)
        none.closeInput()
        #expect(try none.wait(seconds: Self.seconds) != 0, "without --net nothing is reachable")
        #expect(server.connections == 1)

        // SIGKILL: the VMM dies with kiln, the namespace with the VMM; a sweep finds nothing left.
        let before = Set(Self.kilnInterfaces())
        let killed = try kiln(["--net", "--", "sh", "-c", "echo up; busybox sleep 600"])
        killed.closeInput()
        try killed.waitForLine("up", seconds: Self.seconds)
        let veths = Set(Self.kilnInterfaces()).subtracting(before)
        #expect(veths.count == 1, "kiln run --net has one veth")
        kill(killed.pid, SIGKILL)
        _ = try? killed.wait(seconds: 30)
        for _ in 0..<100 where !veths.isDisjoint(with: Self.kilnInterfaces()) { usleep(100_000) }
        #expect(veths.isDisjoint(with: Self.kilnInterfaces()), "left: \(veths)")
        SandboxNetwork.sweep(runtimeBase: runtime)
        var names: [String] = []
        if let d = opendir(runtime + "/netns") {
            while let e = readdir(d) {
                let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if n.hasPrefix("kiln-") { names.append(n) }
            }
            closedir(d)
        }
        #expect(names.isEmpty, "namespace names left: \(names)")
    }

    @Test func publishForwardsAHostConnectionToAGuestListener() throws {
        let port = UInt16(30000 + getpid() % 20000)
        let run = try kiln(["-p", "\(port):7001", "--", "sh", "-c", "busybox nc -l -p 7001 -e busybox echo guest-reply; busybox sleep 5"])
        run.closeInput()
        var reply = ""
        for _ in 0..<300 where reply.isEmpty {
            if let fd = try? TCP.connect("127.0.0.1", port, seconds: 1) {
                reply = String(decoding: TCP.read(fd, upTo: 100, seconds: 60), as: UTF8.self)
                close(fd)
            }
            if reply.isEmpty { sleep(1) }
        }
        #expect(reply == "guest-reply\n", "\(run.errorOutput)")
        #expect(try run.wait(seconds: Self.seconds) == 0, "\(run.errorOutput)")
    }

    static func kilnInterfaces() -> [String] {
        var out: [String] = []
        if let d = opendir("/sys/class/net") {
            while let e = readdir(d) {
                let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if n.hasPrefix(SandboxNetwork.hostVethPrefix) { out.append(n) }
            }
            closedir(d)
        }
        return out
    }
}
