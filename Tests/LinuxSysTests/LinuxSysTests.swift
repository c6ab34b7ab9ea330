import FoundationEssentials
import Glibc
import Testing
@testable import LinuxSys

@Suite struct LinuxSysTests {
    @Test func eventFDCountsSignals() throws {
        let e = try EventFD()
        e.signal(2)
        e.signal(3)
        #expect(e.wait() == 5)
    }

    @Test func openReportsThePathThatFailed() {
        do {
            _ = try FileDescriptor.open("/nonexistent/kiln-test", O_RDONLY)
            Issue.record("open succeeded")
        } catch {
            #expect(error.code == ENOENT)
            #expect(error.description.contains("/nonexistent/kiln-test"))
        }
    }

    /// `kiln boot --net tap=NAME,host=ADDR` on a persistent TAP, twice: the second VM's set-up
    /// finds the first one's address on it and goes on (it failed with `ip addr add`).
    @Test func aPersistentTapTakesTheSameHostAddressTwice() throws {
        let name = "kt\(getpid() % 100_000)"
        #expect(try runProgram(["ip", "tuntap", "add", "dev", name, "mode", "tap"]).status == 0)
        defer { _ = try? runProgram(["ip", "link", "del", name]) }
        for _ in 0..<2 {
            let tap = try Tap(name: name)
            let created = tap.created
            #expect(!created)
            try tap.configureHost(address: "192.0.2.249", prefix: 30)
        }
        let shown = String(decoding: try runProgram(["ip", "-o", "-4", "addr", "show", "dev", name]).stdout, as: UTF8.self)
        #expect(shown.components(separatedBy: "192.0.2.249/30").count == 2, "\(shown)")
    }
}
