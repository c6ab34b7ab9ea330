import Glibc
import Images
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing

/// Images that know nothing of Kiln (docs/images.md, "Booting an image"): root disks made here
/// from a directory with `mkfs.ext4 -d`, as the OCI unpacker makes them, with no agent, no
/// /proc, /dev or /tmp, booted through Kiln's agent disk.
@Suite(.blocking) struct ImageBootTests {
    static let seconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    // A busybox sh on a disk with no applet links runs some applets (echo, ls, id, pwd) by
    // itself and looks the others up on PATH: `cat` is named by its path below.

    /// An ext4 disk at `path` holding /bin/busybox (static) and what `extra` (a shell script run
    /// in the staging directory) adds.
    static func makeDisk(_ path: String, extra: String = "") throws {
        let script = """
            set -e; d=$(mktemp -d); cd "$d"; mkdir bin; cp /bin/busybox bin/busybox
            \(extra)
            truncate -s 32M '\(path)'
            mkfs.ext4 -q -F -O ^has_journal -E root_owner=0:0 -d "$d" '\(path)'
            rm -rf "$d"
            """
        let r = try runProgram(["sh", "-c", script])
        #expect(r.status == 0, "making \(path) failed")
    }

    static func contents(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 1 << 20)
        while case let n = read(fd, &buffer, buffer.count), n > 0 { out += buffer[0..<n] }
        return out
    }

    func kiln(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let k = try KilnProcess(args)
        k.closeInput()
        let status = try k.wait(seconds: Self.seconds)
        return (status, k.output, k.errorOutput)
    }

    @Test func aScratchDiskWithOneStaticBinaryBootsAndItsFileIsNeverWritten() throws {
        let disk = "/tmp/kiln-scratch-\(getpid()).ext4"
        defer { unlink(disk) }
        try Self.makeDisk(disk)
        let before = sha256Hex(Self.contents(disk))
        let r = try kiln(["run", "--no-template", "--root-disk", disk, "--", "/bin/busybox", "sh", "-c",
                          "echo hi; echo written > /new-file && /bin/busybox cat /new-file; ls -d /proc/1 /dev/null /tmp"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "hi\nwritten\n/dev/null\n/proc/1\n/tmp\n", "stderr: \(r.stderr)")
        // The guest wrote to / and made its mount points: all of it went to the write layer.
        #expect(sha256Hex(Self.contents(disk)) == before)
    }

    @Test func aDiskThatIsNotAFilesystemEndsTheBootWithTheAgentsReason() throws {
        let disk = "/tmp/kiln-notfs-\(getpid()).ext4"
        defer { unlink(disk) }
        let fd = open(disk, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(ftruncate(fd, 8 << 20) == 0)
        close(fd)
        let r = try kiln(["run", "--no-template", "--root-disk", disk, "--", "/bin/busybox", "true"])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("kiln: the sandbox VM stopped before its agent came up"), "\(r.stderr)")
        #expect(r.stderr.contains("kiln-agent: cannot enter the image's root: mount /dev/vda (ext4) on /kiln-root"), "\(r.stderr)")
    }

    @Test func anImageConfigGivesTheCommandUserEnvironmentAndDirectoryAndFlagsOverrideThem() throws {
        let disk = "/tmp/kiln-imagecfg-\(getpid()).ext4"
        let configFile = "/tmp/kiln-imagecfg-\(getpid()).json"
        let template = "image-boot-tests-\(getpid())"
        defer { unlink(disk); unlink(configFile); _ = try? kiln(["template", "rm", template]) }
        try Self.makeDisk(disk, extra: """
            mkdir -p etc work home/app
            printf 'root:x:0:0:root:/root:/bin/sh\\napp:x:1234:1234:app:/home/app:/bin/sh\\n' > etc/passwd
            printf 'root:x:0:\\napp:x:1234:\\nstaff:x:50:app\\n' > etc/group
            """)
        // An OCI image configuration blob, as a registry serves it.
        let config = """
            {"architecture":"amd64","os":"linux","config":{"User":"app","Env":["PATH=/bin","GREETING=hello"],
             "Entrypoint":["/bin/busybox","echo"],"Cmd":["from","the","entrypoint"],"WorkingDir":"/work"},
             "rootfs":{"type":"layers","diff_ids":[]}}
            """
        let fd = open(configFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        #expect(write(fd, config, config.utf8.count) == config.utf8.count)
        close(fd)
        // One boot, shared by every run below (each restores it in milliseconds).
        let made = try kiln(["template", "create", template, "--root-disk", disk, "--image-config", configFile])
        #expect(made.status == 0, "stderr: \(made.stderr)")

        // No command: Entrypoint + Cmd, as the image's user, in its WorkingDir.
        let plain = try kiln(["run", "--template", template])
        #expect(plain.status == 0, "stderr: \(plain.stderr)")
        #expect(plain.stdout == "from the entrypoint\n")

        // A command replaces Entrypoint and Cmd; the rest of the config still applies.
        let probe = "id -u; id -g; pwd; echo $GREETING $HOME"
        let configured = try kiln(["run", "--template", template, "--", "/bin/busybox", "sh", "-c", probe])
        #expect(configured.stdout == "1234\n1234\n/work\nhello /home/app\n", "stderr: \(configured.stderr)")

        // -e, -w and -u override the image's Env, WorkingDir and User ("name:group").
        let overridden = try kiln(["run", "--template", template, "-e", "GREETING=bye", "-w", "/", "-u", "app:staff",
                                   "--", "/bin/busybox", "sh", "-c", probe])
        #expect(overridden.stdout == "1234\n50\n/\nbye /home/app\n", "stderr: \(overridden.stderr)")

        // Numbers need no /etc/passwd entry.
        let numeric = try kiln(["run", "--template", template, "-u", "4321:99", "--", "/bin/busybox", "sh", "-c", "id -u; id -g"])
        #expect(numeric.stdout == "4321\n99\n", "stderr: \(numeric.stderr)")

        // A name the image does not have is one clear line.
        let unknown = try kiln(["run", "--template", template, "-u", "nobody-here", "--", "/bin/busybox", "true"])
        #expect(unknown.status == 1)
        #expect(unknown.stderr == "kiln: cannot run as user 'nobody-here': no user 'nobody-here' in the image's /etc/passwd\n")
    }
}

/// How an image's run config and the user's flags combine (no VM).
@Suite(.blocking) struct ImageRunConfigTests {
    let config = ImageConfiguration.RunConfig(User: "app", Env: ["GREETING=hello", "LANG=C"], Entrypoint: ["/entry"],
                                              Cmd: ["a", "b"], WorkingDir: "/work")

    @Test func withoutACommandTheEntrypointAndCmdRun() throws {
        let c = try ImageCommand(config: config)
        #expect(c.argv == ["/entry", "a", "b"])
        #expect(c.environment == ["PATH=\(ImageCommand.defaultPath)", "GREETING=hello", "LANG=C"])
        #expect(c.workingDirectory == "/work")
        #expect(c.user == "app")
    }

    @Test func aCommandReplacesBothAndFlagsOverride() throws {
        let c = try ImageCommand(config: config, command: ["sh"], environment: ["LANG=fr", "PATH=/x"], workingDirectory: "/", user: "0")
        #expect(c.argv == ["sh"])
        #expect(c.environment == ["GREETING=hello", "LANG=fr", "PATH=/x"])
        #expect(c.workingDirectory == "/")
        #expect(c.user == "0")
    }

    @Test func noCommandAnywhereIsAnError() {
        #expect(throws: ImageCommand.Failure.noCommand) { try ImageCommand(config: nil) }
        #expect(throws: ImageCommand.Failure.noCommand) { try ImageCommand(config: .init(Env: ["A=1"])) }
    }

    @Test func aBareRunConfigAndAConfigBlobDecodeAlike() throws {
        let blob = try ImageConfiguration.RunConfig.decode(json: Array(#"{"os":"linux","config":{"Cmd":["x"],"User":"1:2"}}"#.utf8))
        let bare = try ImageConfiguration.RunConfig.decode(json: Array(#"{"Cmd":["x"],"User":"1:2"}"#.utf8))
        #expect(blob == bare)
        #expect(try ImageConfiguration.RunConfig.decode(json: blob.json()) == blob)
    }
}
