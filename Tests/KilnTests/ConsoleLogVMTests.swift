import AgentProtocol
import Glibc
import KilnTestSupport
@testable import Sandbox
import Testing

/// The console log's cap (Sandbox.Configuration.consoleLimit): a guest that writes far more than
/// the cap to its console leaves at most twice the cap on the host, its newest output in
/// console.log, and `consoleTail` (what error messages print) still shows it. Guest work: one
/// command (two processes) per isolation, from the default template.
@Suite struct ConsoleLogVMTests {
    static let limit = 4096
    static let marker = "console-end-marker"

    static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : -1
    }

    static func contents(_ path: String) -> String {
        TestFiles.read(path) ?? ""
    }

    @Test(arguments: [Isolation.automatic, .inProcess])
    func aConsoleSpammingGuestLeavesAtMostTwiceTheCap(_ isolation: Isolation) async throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "this test needs /dev/kvm (CI has it)")
        let snapshot = try await TemplateTests.defaultTemplate()
        let sandbox = try await Sandbox.restore(snapshot: snapshot, runtimeDirectory: "/tmp/kiln-console-tests-\(getpid())",
                                                isolation: isolation, consoleLimit: Self.limit)
        defer { sandbox.stop() }
        // About three caps' worth (the guest's console takes ~10 KB/s here), then a last line.
        let script = "{ head -c 12000 /dev/zero | tr '\\0' x; echo; echo \(Self.marker); } > /dev/console"
        let p = try await sandbox.agent.exec(Exec(argv: ["sh", "-c", script], environment: ["PATH=/bin:/usr/bin"]))
        p.closeStdin()
        let r = try await p.collect()
        #expect(r.status == ExitStatus(.exited(code: 0)), "\(String(decoding: r.stderr, as: UTF8.self))")

        // The guest's serial driver drains its buffer after the command has ended.
        let log = sandbox.directory + "/console.log", rotated = log + ".1"
        for _ in 0..<600 where !Self.contents(log).contains(Self.marker) { try await Task.sleep(nanoseconds: 100_000_000) }
        #expect(Self.contents(log).contains(Self.marker), "console.log: \(Self.contents(log).suffix(300))")
        #expect(Self.size(log) <= Self.limit)
        #expect(Self.size(rotated) > 0 && Self.size(rotated) <= Self.limit, "console.log.1 is \(Self.size(rotated)) bytes")
        #expect(Self.contents(rotated).contains("xxxx"))
        #expect(sandbox.consoleTail(lines: 2).contains(Self.marker), "\(sandbox.consoleTail(lines: 2))")
    }

    /// A log that just started over still gives the lines before, from console.log.1.
    @Test func theTailContinuesIntoTheRotationFile() throws {
        let dir = "/tmp/kiln-console-tail-\(getpid())"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/console.log"); unlink(dir + "/console.log.1"); rmdir(dir) }
        func write(_ name: String, _ text: String) {
            let fd = open(dir + "/" + name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
            close(fd)
        }
        write("console.log.1", (1...30).map { "old \($0)\n" }.joined())
        write("console.log", "new 1\nnew 2\n")
        #expect(Sandbox.consoleTail(dir + "/console.log", lines: 4) == "old 29\nold 30\nnew 1\nnew 2")
        // A log with enough lines of its own is not continued.
        write("console.log", (1...30).map { "new \($0)\n" }.joined())
        #expect(Sandbox.consoleTail(dir + "/console.log", lines: 2) == "new 29\nnew 30")
        // What the guest wrote cannot drive the terminal an error message goes to.
        write("console.log", "ok\r\n\u{1B}]0;owned\u{07}\u{1B}[2Jbye\r\n")
        #expect(Sandbox.consoleTail(dir + "/console.log", lines: 2) == "ok\n?]0;owned??[2Jbye")
    }
}
