import Glibc
import KilnTestSupport
import LinuxSys
import Testing

/// The jail a root `kiln boot` puts the VMM in (docs/security.md, "Jailer"), checked from inside
/// through the debug build's KILN_TEST_JAIL_REPORT line, and from outside through cgroupfs,
/// /run/kiln/jail, the network namespace's links and the file system.
@Suite(.blocking) struct JailTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        #expect(geteuid() == 0, "the jail needs root (CI runs as root)")
    }

    /// The report's `key=value` fields, once the jailed VMM printed it on stderr.
    static func report(_ kiln: KilnProcess, seconds: Double = 120) throws -> [String: String] {
        try kiln.waitFor("the jail report", seconds: seconds) { $0.errorOutput.contains("KILN-JAIL-REPORT ") && $0.errorOutput.hasSuffix("\n") }
        let line = kiln.errorOutput.split(separator: "\n").first { $0.hasPrefix("KILN-JAIL-REPORT ") } ?? ""
        var fields: [String: String] = [:]
        for item in line.split(separator: " ").dropFirst() {
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if kv.count == 2 { fields[String(kv[0])] = String(kv[1]) }
        }
        return fields
    }

    /// The VM's cgroup directories (v1: per controller; v2: one), from the report's cgroup field.
    static func cgroupDirectories(_ field: String) -> [String: String] {
        var dirs: [String: String] = [:]
        for entry in field.split(separator: ";") {
            let parts = entry.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, parts[1].contains("/kiln/") else { continue }
            if parts[0].isEmpty { dirs["unified"] = "/sys/fs/cgroup" + parts[1] }
            else { dirs[parts[0]] = "/sys/fs/cgroup/\(parts[0])" + parts[1] }
        }
        return dirs
    }

    static func read(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var out = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), f) != nil {
            out += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return out.trimmingPrefix(while: \.isWhitespace).split(separator: "\n").joined(separator: "\n")
    }

    /// Jail directories (/run/kiln/jail/<supervisor pid>-<random>) of the given supervisors.
    static func jailEntries(of pids: Set<pid_t>) -> [String] {
        entries("/run/kiln/jail", of: pids)
    }

    static func entries(_ dir: String, of pids: Set<pid_t>) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let pid = name.split(separator: "-").first.flatMap({ pid_t($0) }), pids.contains(pid) { out.append(dir + "/" + name) }
        }
        return out
    }

    /// Every `kiln` cgroup parent on this host (v1 controllers, or v2).
    static var cgroupParents: [String] {
        var parents = ["/sys/fs/cgroup/kiln", "/sys/fs/cgroup/pids/kiln", "/sys/fs/cgroup/cpu/kiln"]
        for line in read("/proc/self/cgroup").split(separator: "\n") where line.contains(":memory:") {
            let path = line.split(separator: ":", maxSplits: 2).last.map(String.init) ?? "/"
            parents.append("/sys/fs/cgroup/memory" + (path == "/" ? "" : path) + "/kiln")
        }
        return parents
    }

    static func leftovers(of pids: Set<pid_t>) -> [String] {
        jailEntries(of: pids) + cgroupParents.flatMap { entries($0, of: pids) }
    }

    @Test func jailedVMMSeesOnlyItsJailHasNoCapabilitiesAndItsCgroupHasTheLimits() throws {
        // A descriptor kiln inherits (no O_CLOEXEC here) must not reach the VMM.
        let leak = "/tmp/kiln-jail-leak-\(getpid())"
        let leaked = open(leak, O_RDWR | O_CREAT, 0o600)
        defer { close(leaked); unlink(leak) }
        let kiln = try KilnProcess(["boot", "--cpus", "2", "--memory", "192", "--jail-uid", "64123"],
                                   environment: ["KILN_TEST_JAIL_REPORT": "1"])
        let r = try Self.report(kiln)
        #expect(r["uid"] == "64123/64123/64123/64123", "real/effective/saved/fs uid")
        #expect(r["gid"] == "64123/64123/64123/64123", "--jail-gid defaults to the uid")
        #expect(r["groups"] == "")
        let none = "0000000000000000"
        for set in ["capeff", "capprm", "capinh", "capbnd", "capamb"] { #expect(r[set] == none, "\(set)") }
        #expect(r["threadcapeff"] == none, "one thread so far, with nothing")
        #expect(r["nonewprivs"] == "1")
        #expect(r["pids"] == "1", "its own PID namespace: it is PID 1 and sees nothing else")
        #expect(r["root"] == "dev/proc", "the jail's root holds only /dev and /proc")
        #expect(r["etc-hostname"] == "ENOENT", "host files are not there")
        #expect(r["dev-kvm"] == "ENOENT", "/dev/kvm was opened before the jail; it cannot open another")
        #expect(r["write-root"] == "EROFS")
        #expect(r["netdevs"] == "lo", "an empty network namespace")
        let fds = (r["fds"] ?? "").split(separator: ",").map(String.init)
        #expect(!fds.isEmpty && !fds.contains { $0.contains(leak) }, "inherited descriptors are closed: \(fds)")
        #expect(fds.contains { $0.hasPrefix("0:") } && fds.contains { $0.hasPrefix("2:") }, "the console stays")
        #expect(fds.contains { $0.hasSuffix("anon_inode:kvm-vm") }, "\(fds)")

        let dirs = Self.cgroupDirectories(r["cgroup"] ?? "")
        let limit = UInt64(192 + 128) << 20
        if let unified = dirs["unified"] {
            #expect(Self.read(unified + "/memory.max") == "\(limit)")
            #expect(Self.read(unified + "/cpu.max") == "300000 100000", "2 vCPUs + 1 for the VMM's other threads")
            #expect(Self.read(unified + "/pids.max") == "18")
            #expect(Self.read(unified + "/cgroup.procs").split(separator: "\n").count == 1)
        } else {
            try #require(dirs["memory"] != nil && dirs["pids"] != nil && dirs["cpu"] != nil, "cgroups: \(r["cgroup"] ?? "none")")
            #expect(Self.read(dirs["memory"]! + "/memory.limit_in_bytes") == "\(limit)")
            #expect(Self.read(dirs["cpu"]! + "/cpu.cfs_quota_us") == "300000", "2 vCPUs + 1 for the VMM's other threads")
            #expect(Self.read(dirs["cpu"]! + "/cpu.cfs_period_us") == "100000")
            #expect(Self.read(dirs["pids"]! + "/pids.max") == "18")
            #expect(Self.read(dirs["memory"]! + "/cgroup.procs").split(separator: "\n").count == 1)
        }

        // SIGTERM to kiln: the VMM is killed and the jail directory and cgroup go with it.
        kill(kiln.pid, SIGTERM)
        #expect(try kiln.wait(seconds: 60) == 128 + SIGTERM)
        #expect(kiln.errorOutput.contains("kiln: stopped by signal 15"), "\(kiln.errorOutput)")
        #expect(Self.leftovers(of: [kiln.pid]).isEmpty, "\(Self.leftovers(of: [kiln.pid]))")
        for dir in dirs.values { #expect(access(dir, F_OK) != 0, "\(dir) removed") }
    }

    @Test func jailUIDZeroIsRefused() throws {
        let kiln = try KilnProcess(["boot", "--jail-uid", "0"])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 2)
        #expect(kiln.errorOutput.hasPrefix("kiln: --jail-uid and --jail-gid must not be 0"), "\(kiln.errorOutput)")
    }

    @Test func noJailRunsUnconfinedAndSaysSo() throws {
        let kiln = try KilnProcess(["boot", "--no-jail"], environment: ["KILN_TEST_JAIL_REPORT": "1"])
        try kiln.waitFor("the warning", seconds: 60) { $0.errorOutput.contains("\n") }
        #expect(kiln.errorOutput.hasPrefix("kiln: warning: --no-jail"), "\(kiln.errorOutput)")
        kill(kiln.pid, SIGKILL)
        _ = try kiln.wait(seconds: 30)
        #expect(!kiln.errorOutput.contains("KILN-JAIL-REPORT"))
    }

    /// The guest writes 100 MiB into its RAM-backed root (it has 256 MiB), but the test caps the
    /// jail at 64 MiB (a booted VMM uses about 31): the kernel's OOM killer ends the VMM, nothing
    /// else, and kiln says so and cleans up. (The cap is small because writing guest memory is
    /// guest kernel work, about 1 MiB/s on hosts whose guest kernel mode is emulated.)
    @Test func guestThatOutgrowsTheCgroupGetsItsVMMKilledAndReported() throws {
        let kiln = try KilnProcess(["boot"], environment: ["KILN_TEST_JAIL_MEMORY_MIB": "64", "KILN_TEST_JAIL_REPORT": "1"])
        try kiln.waitForLine("KILN-INIT-READY", seconds: BootCommandTests.bootSeconds)
        kiln.send("busybox dd if=/dev/zero of=/fill bs=1048576 count=100\n")
        let status = try kiln.wait(seconds: 600)
        #expect(status == 128 + SIGKILL, "\(kiln.errorOutput)")
        #expect(kiln.errorOutput.contains("exceeded the jail's memory limit (64 MiB"), "\(kiln.errorOutput)")
        #expect(kiln.errorOutput.contains("OOM killer"))
        #expect(Self.leftovers(of: [kiln.pid]).isEmpty, "\(Self.leftovers(of: [kiln.pid]))")
        // The host is untouched: this process (the VMM's grandparent) is alive and a fresh jail starts.
        let next = try KilnProcess(["boot"], environment: ["KILN_TEST_JAIL_REPORT": "1"])
        #expect(try Self.report(next)["pids"] == "1")
        kill(next.pid, SIGTERM)
        _ = try next.wait(seconds: 60)
    }

    /// 50 starts, each ended a different way before or after the jail is up: SIGKILL of the VMM,
    /// SIGTERM of kiln, SIGKILL of kiln (its entries are swept by the next start), SIGKILL of kiln
    /// at once. With a TAP in a private network namespace and a vsock socket each time.
    @Test func fiftyStartKillCyclesLeaveNothingBehind() throws {
        let ns = try NetNamespace(name: "kiln-jail-\(getpid())")
        defer { ns.delete() }
        let dir = "/tmp/kiln-jail-cycles-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = try? runProgram(["/bin/rm", "-rf", dir]) }
        let socketPath = "\(dir)/v.sock"
        var supervisors: Set<pid_t> = []
        var ended: [Int32: Int] = [:]
        for cycle in 0..<50 {
            let kiln = try KilnProcess(ns.exec([KilnProcess.binary, "boot", "--net", "tap=auto", "--vsock", socketPath]),
                                       environment: ["KILN_TEST_JAIL_REPORT": "1"], executable: "ip")
            supervisors.insert(kiln.pid)
            let mode = cycle % 4
            if mode == 3 {
                usleep(UInt32(cycle % 8) * 20_000)
                kill(kiln.pid, SIGKILL)
            } else {
                let r = try Self.report(kiln)
                #expect(r["netdevs"] == "lo")
                #expect(access(socketPath, F_OK) == 0, "the vsock socket is at the user's path")
                let links = try runProgram(["ip", "-n", ns.name, "-o", "link", "show"])
                #expect(String(decoding: links.stdout, as: UTF8.self).contains("kiln"), "the VM's TAP is up in the caller's namespace")
                switch mode {
                case 0:
                    let vmm = pid_t(Self.read(Self.jailEntries(of: [kiln.pid]).first.map { $0 + "/vmm.pid" } ?? "")) ?? 0
                    try #require(vmm > 0)
                    kill(vmm, SIGKILL)
                case 1: kill(kiln.pid, SIGTERM)
                default: kill(kiln.pid, SIGKILL)
                }
            }
            let status = try kiln.wait(seconds: 60)
            ended[status, default: 0] += 1
            if mode == 0 {
                #expect(status == 128 + SIGKILL && kiln.errorOutput.contains("the VMM was killed by signal 9 (Killed)"), "\(kiln.errorOutput)")
            }
            if mode == 0 || mode == 1 {
                // A supervisor that lived to see the end removed everything; a SIGKILLed one's entries
                // were swept by this cycle's start.
                #expect(Self.leftovers(of: supervisors).isEmpty, "cycle \(cycle): \(Self.leftovers(of: supervisors))")
                #expect(access(socketPath, F_OK) != 0, "cycle \(cycle): the vsock socket is removed")
                let links = try runProgram(["ip", "-n", ns.name, "-o", "link", "show"])
                #expect(String(decoding: links.stdout, as: UTF8.self).split(separator: "\n").count == 1,
                        "cycle \(cycle): only lo is left: \(String(decoding: links.stdout, as: UTF8.self))")
            }
        }
        #expect(Self.leftovers(of: supervisors).isEmpty, "\(Self.leftovers(of: supervisors))")
        #expect(access(socketPath, F_OK) != 0)
        #expect(ended[128 + SIGKILL, default: 0] == 37 && ended[128 + SIGTERM, default: 0] == 13, "\(ended)")
    }
}
