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
}
