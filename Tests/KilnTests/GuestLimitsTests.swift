import Glibc
import KilnTestSupport
import Testing

/// The agent's per-command pids limit (docs/agent-protocol.md, "Limits"): a fork bomb stays in
/// its cgroup, so the agent still answers and `--timeout` ends it; `--pids` is what a user sets.
@Suite(.blocking) struct GuestLimitsTests {
    static let seconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    /// Issue 14: this fork bomb ran on past its timeout until it was killed from outside.
    @Test func aForkBombEndsAtItsTimeoutAndTheNextRunWorks() throws {
        let bomb = try KilnProcess(["run", "--timeout", "20", "--", "sh", "-c", "f(){ f|f& }; f"])
        bomb.closeInput()
        #expect(try bomb.wait(seconds: Self.seconds) == 124)
        // The agent killed the command's cgroup itself: the host did not have to stop the VM.
        #expect(bomb.errorOutput.contains("the command timed out after 20 s and was killed"), "\(bomb.errorOutput.suffix(2000))")
        #expect(!bomb.errorOutput.contains("did not respond"), "\(bomb.errorOutput.suffix(2000))")

        let next = try KilnProcess(["run", "--", "echo", "ok"])
        next.closeInput()
        #expect(try next.wait(seconds: Self.seconds) == 0, "\(next.errorOutput)")
        #expect(next.output == "ok\n")
    }

    /// With --pids 5 the shell and four sleeps fit; the fifth fork fails in the guest, and the
    /// shell says so (busybox sh then exits, as a shell does on a failed fork).
    @Test func aPidsLimitMakesForkFailInTheGuest() throws {
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 60 >/dev/null 2>&1 & echo started $i; done"
        let kiln = try KilnProcess(["run", "--pids", "5", "--", "sh", "-c", script])
        kiln.closeInput()
        let status = try kiln.wait(seconds: Self.seconds)
        #expect(status != 0)
        #expect(kiln.output.split(separator: "\n").map(String.init) == (1...4).map { "started \($0)" }, "\(kiln.output)")
        #expect(kiln.errorOutput.contains("fork"), "\(kiln.errorOutput)")
    }

    /// Commands start with 1024 open files (4096 hard) whatever the agent's own limit, and with
    /// exactly what --open-files says when it is given.
    @Test func theOpenFilesLimitIsTheDefaultOrWhatWasAsked() throws {
        let script = "ulimit -Sn; ulimit -Hn"
        let plain = try KilnProcess(["run", "--", "sh", "-c", script])
        plain.closeInput()
        #expect(try plain.wait(seconds: Self.seconds) == 0, "\(plain.errorOutput)")
        #expect(plain.output == "1024\n4096\n")

        let asked = try KilnProcess(["run", "--open-files", "100", "--", "sh", "-c", script])
        asked.closeInput()
        #expect(try asked.wait(seconds: Self.seconds) == 0, "\(asked.errorOutput)")
        #expect(asked.output == "100\n100\n")
    }
}
