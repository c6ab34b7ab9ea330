import Glibc
import KilnTestSupport
import Testing

/// `kiln serve` as root: every thread of the service is held to the service seccomp policy,
/// and the VMMs are started by a separate, unfiltered launcher process (docs/security.md,
/// "The service's launcher").
@Suite(.blocking) struct ServeSeccompTests {
    static func read(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func seccompField(_ statusPath: String) -> String? {
        read(statusPath)?.split(separator: "\n").first { $0.hasPrefix("Seccomp:") }
            .map { String($0.dropFirst("Seccomp:".count).filter { !$0.isWhitespace }) }
    }

    static func entries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The processes whose parent is `pid`, with their command lines (NUL-separated fields joined by spaces).
    static func children(of pid: pid_t) -> [(pid: pid_t, cmdline: String)] {
        entries("/proc").compactMap { name -> (pid_t, String)? in
            guard let child = pid_t(name), let stat = read("/proc/\(name)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, pid_t(fields[1]) == pid else { return nil }
            let cmdline = (read("/proc/\(name)/cmdline") ?? "").split(separator: "\0").joined(separator: " ")
            return (child, cmdline)
        }
    }

    func startService(environment: [String: String] = [:]) throws -> (KilnProcess, String) {
        let state = "/tmp/kiln-serve-seccomp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let kiln = try KilnProcess(["serve", "--listen", "127.0.0.1:0", "--state-dir", state], environment: environment)
        return (kiln, state)
    }

    @Test func everyServiceThreadIsFilteredAndTheLauncherIsASeparateProcess() throws {
        try #require(geteuid() == 0, "the service confines itself as root, where its VMMs are jailed")
        let (kiln, state) = try startService()
        defer { _ = Glibc.kill(kiln.pid, SIGKILL); _ = try? kiln.wait(seconds: 30); _ = system("rm -rf '\(state)'") }
        try kiln.waitFor("kiln serve to listen", seconds: 120) { $0.errorOutput.contains("listening on http://") }

        let tasks = Self.entries("/proc/\(kiln.pid)/task")
        #expect(tasks.count > 1, "the service runs threads (NIO, Swift Concurrency)")
        for task in tasks {
            #expect(Self.seccompField("/proc/\(kiln.pid)/task/\(task)/status") == "2", "thread \(task) of kiln serve is not filtered")
        }

        let launchers = Self.children(of: kiln.pid).filter { $0.cmdline.hasSuffix("__launcher") }
        #expect(launchers.count == 1, "one launcher process, got \(Self.children(of: kiln.pid))")
        if let launcher = launchers.first {
            #expect(launcher.pid != kiln.pid)
            // It starts the VMMs (clone3 into namespaces, execve), which the service policy forbids.
            #expect(Self.seccompField("/proc/\(launcher.pid)/status") == "0", "the launcher is not under the service's filter")
            #expect(Glibc.kill(kiln.pid, SIGTERM) == 0)
            _ = try kiln.wait(seconds: 60)
            // It ends with the service (its socket closes); then it is a zombie of init or gone.
            var alive = true
            for _ in 0..<600 where alive {
                let stat = Self.read("/proc/\(launcher.pid)/stat") ?? ""
                alive = !stat.isEmpty && !stat.contains(") Z ") && stat.contains("kiln")
                if alive { usleep(100_000) }
            }
            #expect(!alive, "the launcher outlived the service")
        }
    }

    #if DEBUG
    @Test func aForbiddenCallKillsTheServiceWithSIGSYS() throws {
        try #require(geteuid() == 0, "the service confines itself as root, where its VMMs are jailed")
        // The debug-only hook calls getppid, which the service policy does not allow, right after the filter is installed.
        let (kiln, state) = try startService(environment: ["KILN_TEST_FORBIDDEN_SYSCALL": "service"])
        defer { _ = system("rm -rf '\(state)'") }
        let status = try kiln.wait(seconds: 120)
        #expect(status == 128 + SIGSYS, "status \(status), stderr: \(kiln.errorOutput)")
    }
    #endif
}
