import Glibc
import KilnTestSupport
import Synchronization
import Testing

/// `kiln run --image REF` end to end, as a user runs it: a real registry on 127.0.0.1, images
/// pushed to it, the kiln CLI, real VMs, and what the command prints inside the guest
/// (docs/images.md, "Booting an image").
///
/// One registry for the suite; each image is pulled and booted once (its first run makes the
/// automatic template), and every later run of it restores that template. The cache is the shared
/// one (/var/cache/kiln, as ImageBootTests): the kernel and agent disk are not rebuilt, and the
/// store keeps images by digest, so runs of this suite do not see each other's images.
@Suite(.serialized, .blocking) struct OCIRunTests {
    static let seconds = 600.0

    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    /// The suite's registry and what has been pushed to it, made on first use.
    final class Fixture: Sendable {
        let registry: TestRegistry
        /// HOME for kiln: no registry credentials from the host's ~/.docker.
        let home: String
        private let pushed = Mutex<Set<String>>([])

        init() throws {
            registry = try TestRegistry()
            home = try TestImages.temporaryDirectory("kiln-oci-run-home")
        }

        /// The reference of `tag` of `layout`, pushed as test/NAME:v1 the first time.
        func reference(_ tag: String, of layout: () throws -> String) throws -> String {
            let ref = "\(registry.address)/test/\(tag):v1"
            try pushed.withLock { pushed in
                guard !pushed.contains(tag) else { return }
                try registry.push(try layout(), tag: tag, as: "test/\(tag):v1")
                pushed.insert(tag)
            }
            return ref
        }
    }

    private static let made = Mutex<Fixture?>(nil)

    static func fixture() throws -> Fixture {
        try made.withLock { made in
            if let made { return made }
            let f = try Fixture()
            made = f
            return f
        }
    }

    func kiln(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let k = try KilnProcess(args, environment: ["HOME": try Self.fixture().home])
        k.closeInput()
        let status = try k.wait(seconds: Self.seconds)
        return (status, k.output, k.errorOutput)
    }

    /// `kiln run --image REF [FLAGS] [-- COMMAND]`. A first boot on a host shared with builds can
    /// take minutes: the boot timeout is not what these tests are about.
    func run(_ ref: String, _ flags: [String] = [], _ command: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
        try kiln(["run", "--image", ref, "--boot-timeout", "570"] + flags + (command.isEmpty ? [] : ["--"] + command))
    }

    /// The first run of an image pulls it and boots; the second starts from its template.
    func expectPulledOnceThenRestored(_ first: (status: Int32, stdout: String, stderr: String),
                                      _ second: (status: Int32, stdout: String, stderr: String), _ ref: String) {
        #expect(first.stderr.contains("kiln: pulling \(ref) (first use)"), "\(first.stderr)")
        #expect(!second.stderr.contains("pulling"), "\(second.stderr)")
        #expect(!second.stderr.contains("booting"), "\(second.stderr)")
    }

    @Test func aScratchImageRunsTheCommandAndHasItsFiles() throws {
        let ref = try Self.fixture().reference("scratch", of: TestImages.layout)
        let echo = try run(ref, [], ["/bin/busybox", "echo", "hi", "from", "scratch"])
        #expect(echo.status == 0, "stderr: \(echo.stderr)")
        #expect(echo.stdout == "hi from scratch\n", "stderr: \(echo.stderr)")

        let files = try run(ref, [], ["/bin/busybox", "sh", "-c", "ls /bin; /bin/busybox readlink /bin/sh"])
        #expect(files.status == 0, "stderr: \(files.stderr)")
        #expect(files.stdout == "busybox\nsh\nbusybox\n", "stderr: \(files.stderr)")
        expectPulledOnceThenRestored(echo, files, ref)
    }

    @Test func aLayeredImageShowsTheUpperLayersDeletionsAndReplacementsAndNoWhiteouts() throws {
        let ref = try Self.fixture().reference("layered", of: TestImages.layout)
        let probe = """
            cd /
            for f in etc/lower-only data/gone data/gone/sub/file etc/kept etc/replaced etc/upper-only data/swap/inside; do
                if [ -e $f ]; then echo "$f here"; else echo "$f gone"; fi
            done
            [ -d data/swap ] && echo "data/swap is a directory"
            /bin/busybox cat etc/kept etc/replaced etc/upper-only data/swap/inside
            /bin/busybox find / -xdev -name '.wh.*'
            """
        let r = try run(ref, [], ["/bin/busybox", "sh", "-c", probe])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == """
            etc/lower-only gone
            data/gone gone
            data/gone/sub/file gone
            etc/kept here
            etc/replaced here
            etc/upper-only here
            data/swap/inside here
            data/swap is a directory
            lower
            upper
            upper
            upper

            """, "stderr: \(r.stderr)")
    }

    @Test func aConfigImageRunsItsEntrypointAsItsUserInItsDirectoryAndFlagsOverride() throws {
        let ref = try Self.fixture().reference("config", of: TestImages.layout)
        // No command: Entrypoint (/bin/busybox echo) + Cmd (hello from-config).
        let plain = try run(ref)
        #expect(plain.status == 0, "stderr: \(plain.stderr)")
        #expect(plain.stdout == "hello from-config\n", "stderr: \(plain.stderr)")

        let probe = ["/bin/busybox", "sh", "-c", "id -u; pwd; echo $KILN_TEST $PATH"]
        let configured = try run(ref, [], probe)
        #expect(configured.status == 0, "stderr: \(configured.stderr)")
        #expect(configured.stdout == "1000\n/work\nyes /bin\n", "stderr: \(configured.stderr)")
        expectPulledOnceThenRestored(plain, configured, ref)

        let overridden = try run(ref, ["-e", "KILN_TEST=overridden", "-w", "/", "-u", "0"], probe)
        #expect(overridden.status == 0, "stderr: \(overridden.stderr)")
        #expect(overridden.stdout == "0\n/\noverridden /bin\n", "stderr: \(overridden.stderr)")
    }

    @Test func aDebianImageRunsPython() throws {
        let ref = try Self.fixture().reference("debian-python") {
            try TestImages.run([TestImages.script("make-debian-image.sh")], seconds: 1800).split(separator: "\n").last.map(String.init) ?? ""
        }
        let r = try run(ref, [], ["python3", "-c", "print(6*7)"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "42\n", "stderr: \(r.stderr)")

        // The image's user and files, through the restored template.
        let user = try run(ref, ["-u", "user"], ["python3", "-c", "import os; print(os.getuid(), os.getcwd(), open('/etc/debian_version').read().split('.')[0].isdigit())"])
        #expect(user.status == 0, "stderr: \(user.stderr)")
        #expect(user.stdout == "1000 / True\n", "stderr: \(user.stderr)")
        expectPulledOnceThenRestored(r, user, ref)
    }

    @Test func aMuslImageRunsADynamicallyLinkedMuslProgram() throws {
        let ref = try Self.fixture().reference("musl") {
            try TestImages.run([TestImages.script("make-musl-image.sh"), try TestImages.temporaryDirectory("kiln-musl-image")])
                .split(separator: "\n").last.map(String.init) ?? ""
        }
        let r = try run(ref, [], ["hello-musl"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "hello from musl (musl libc)\n", "stderr: \(r.stderr)")
    }

    @Test func anImageTheRegistryDoesNotHaveIsOneLineNamingIt() throws {
        let fixture = try Self.fixture()
        let ref = "\(fixture.registry.address)/nope:v1"
        let r = try run(ref, [], ["true"])
        #expect(r.status != 0)
        #expect(r.stdout == "")
        let errors = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("kiln: pulling ") }
        #expect(errors.count == 1, "\(r.stderr)")
        let line = errors.first.map(String.init) ?? ""
        #expect(line.hasPrefix("kiln: ") && line.contains(ref), "\(r.stderr)")
        #expect(line.contains("404") || line.lowercased().contains("not found"), "\(r.stderr)")
    }

    @Test func aReferenceWithBadSyntaxIsOneClearLine() throws {
        let r = try kiln(["run", "--image", "UPPER/Case::x", "--", "true"])
        #expect(r.status != 0)
        #expect(r.stdout == "")
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        // Validated with every other option before any work (Settings.swift): the line names the
        // option, the forms it takes and what is wrong with this one.
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("kiln: --image needs "), "\(r.stderr)")
        #expect(r.stderr.contains("got 'UPPER/Case::x' ('UPPER' is not a repository name component"), "\(r.stderr)")
    }
}
