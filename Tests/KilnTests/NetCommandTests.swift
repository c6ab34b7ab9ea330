import Glibc
import KilnTestSupport
import Testing

/// `kiln boot --net` end to end: TCP both ways between the guest and a host socket.
/// The network rule: traffic never leaves this machine. Kiln, its TAP and the host's sockets
/// all live in a network namespace the test creates and deletes, so the addresses below
/// exist nowhere else.
@Suite(.blocking) struct NetCommandTests {
    static let host = "10.200.77.1", guest = "10.200.77.2"

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        #expect(geteuid() == 0, "network namespaces and TAP devices need root (CI runs as root)")
    }

    @Test func guestAndHostTalkTCPBothWaysOverTheTap() throws {
        let ns = try NetNamespace(name: "kiln-test-\(getpid())")
        defer { ns.delete() }
        let listener = try ns.run { try TCP.listen(port: 7000) }
        defer { close(listener) }

        let kiln = try KilnProcess(ns.exec([KilnProcess.binary, "boot", "--net",
                                            "tap=auto,host=\(Self.host)/24,guest=\(Self.guest)"]), executable: "ip")
        try kiln.waitForLine("KILN-INIT-READY", seconds: BootCommandTests.bootSeconds)
        // One line: a listener for the host to call later, then a call to the host's listener.
        // `busybox nc`, not `nc`: ash runs an applet in a forked child without exec, which this
        // host's emulated-CPL0 KVM can crash (docs/host-kvm.md); `busybox` itself is exec'd.
        kiln.send("busybox nc -l -p 7001 -e busybox echo guest-reply & echo guest-hello | busybox nc \(Self.host) 7000\n")
        do {
            // Guest to host: the host reads the guest's line and answers it.
            let connection = try TCP.accept(listener, seconds: 300)
            let fromGuest = TCP.read(connection, upTo: 12, seconds: 120)
            #expect(String(decoding: fromGuest, as: UTF8.self) == "guest-hello\n")
            #expect(TCP.write(connection, Array("host-reply\n".utf8)))
            close(connection)
            try kiln.waitForLine("host-reply", seconds: 120)

            // Host to guest: the guest's listener answers the host.
            let toGuest = try ns.run { try TCP.connect(Self.guest, 7001, seconds: 120) }
            let reply = TCP.read(toGuest, upTo: 100, seconds: 120)
            close(toGuest)
            #expect(String(decoding: reply, as: UTF8.self) == "guest-reply\n")
        } catch {
            Issue.record("\(error)\nconsole:\n\(kiln.output.suffix(3000))\nstderr: \(kiln.errorOutput)")
        }
        kiln.send("reboot -f\n")
        #expect(try kiln.wait(seconds: 120) == 0, "stderr: \(kiln.errorOutput)")
    }
}
