import Glibc
import KilnTestSupport
import Testing

/// `kiln boot` end to end with Kiln's own Linux kernel and initramfs on /dev/kvm.
/// Each boot takes about 30 s on hosts whose guest kernel mode is emulated, so the
/// suite boots twice in all: once per boot protocol.
@Suite(.blocking) struct BootCommandTests {
    static let bootSeconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    @Test func pipedCommandsRunAndRebootEndsKilnWithStatusZero() throws {
        // The README's first command: input written before the guest is even up.
        let kiln = try KilnProcess(["boot"])
        kiln.send("echo hello-from-guest\nreboot -f\n")
        let status = try kiln.wait(seconds: Self.bootSeconds)
        #expect(kiln.outputLines.contains("KILN-INIT-READY"), "the marker printed by /init")
        #expect(kiln.outputLines.contains("hello-from-guest"), "\(kiln.output.suffix(2000))")
        #expect(status == 0, "stderr: \(kiln.errorOutput)")
    }

    @Test func linux64ProtocolBootsAndTypedCommandsGetAnswers() throws {
        let kiln = try KilnProcess(["boot", "--boot-protocol", "linux64"])
        try kiln.waitForLine("KILN-INIT-READY", seconds: Self.bootSeconds)
        kiln.send("echo $((6 * 7))-from-guest\n")
        try kiln.waitForLine("42-from-guest", seconds: 120)
        kiln.send("reboot -f\n")
        #expect(try kiln.wait(seconds: 120) == 0, "stderr: \(kiln.errorOutput)")
    }
}

/// Errors a user can make, each answered by one clear line and a non-zero status.
@Suite(.blocking) struct BootErrorTests {
    func run(_ args: [String]) throws -> (status: Int32, stderr: String, stdout: String) {
        let kiln = try KilnProcess(args)
        kiln.closeInput()
        let status = try kiln.wait(seconds: 60)
        return (status, kiln.errorOutput, kiln.output)
    }

    func oneLine(_ text: String) -> Bool {
        text.hasSuffix("\n") && text.dropLast().split(separator: "\n").count == 1
    }

    @Test func truncatedKernelGivesAClearError() throws {
        let path = "/tmp/kiln-truncated-\(getpid())"
        defer { unlink(path) }
        // The first 64 KiB of a real vmlinux: headers intact, segments cut off.
        let source = open("/var/cache/kiln/kernel/vmlinux", O_RDONLY)
        #expect(source >= 0, "the default kernel is built before the tests run")
        var head = [UInt8](repeating: 0, count: 65536)
        let n = read(source, &head, head.count)
        close(source)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = write(fd, head, max(n, 0))
        close(fd)
        let r = try run(["boot", "--kernel", path])
        #expect(r.status != 0)
        #expect(r.stderr.hasPrefix("kiln: cannot boot kernel \(path): kernel image is truncated"), "\(r.stderr)")
        #expect(oneLine(r.stderr), "\(r.stderr)")
    }

    @Test func missingKernelGivesAClearError() throws {
        let r = try run(["boot", "--kernel", "/nonexistent/vmlinux"])
        #expect(r.status == 1)
        #expect(r.stderr == "kiln: kernel /nonexistent/vmlinux not found\n")
    }

    @Test func garbageKernelIsNotAKernel() throws {
        let r = try run(["boot", "--kernel", "/etc/passwd"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("not a Linux kernel"), "\(r.stderr)")
        #expect(oneLine(r.stderr))
    }

    @Test func tooLittleMemoryGivesAClearError() throws {
        let r = try run(["boot", "--memory", "16"])
        #expect(r.status == 2)
        #expect(r.stderr == "kiln: --memory needs a whole number of MiB from 32 to 1048576, got '16'\n")
    }

    @Test func kernelAndInitrdThatDoNotFitInMemory() throws {
        // A 15 MiB "initrd" beside a kernel that ends near 25 MiB cannot fit in 32 MiB.
        let kernel = "/var/cache/kiln/kernel/vmlinux"
        let r = try run(["boot", "--memory", "32", "--kernel", kernel, "--initrd", kernel])
        #expect(r.status == 1)
        #expect(r.stderr.contains("guest memory too small"), "\(r.stderr)")
        #expect(oneLine(r.stderr), "\(r.stderr)")
    }

    @Test func badOptionsAreOneLineWithoutTheHelpText() throws {
        let r = try run(["boot", "--cpus", "many"])
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("kiln: --cpus needs a whole number"), "\(r.stderr)")
        #expect(oneLine(r.stderr), "\(r.stderr)")
        let r2 = try run(["frobnicate"])
        #expect(r2.status == 2)
        #expect(r2.stderr.hasPrefix("kiln: ") && r2.stderr.contains("'frobnicate'"), "\(r2.stderr)")
        #expect(oneLine(r2.stderr), "\(r2.stderr)")
        // The help is there when asked for: on stdout, exit 0.
        let help = try run(["--help"])
        #expect(help.status == 0)
        for command in ["run", "template", "image", "boot", "restore", "serve"] { #expect(help.stdout.contains("  \(command) "), "\(help.stdout)") }
        #expect(!help.stdout.contains("__launcher"))
    }
}
