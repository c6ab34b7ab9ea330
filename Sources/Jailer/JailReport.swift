#if DEBUG
import Glibc
import LinuxSys

/// Debug builds only (KILN_TEST_JAIL_REPORT=1): once the jail is entered, the VMM prints one
/// line on stderr saying what it can see and do, so tests can check the jail from inside.
/// Release builds compile this out.
enum JailReport {
    /// Interface names in this network namespace, from /proc/self/net/dev.
    static func netDevices() -> [String] {
        (Files.read("/proc/self/net/dev") ?? "").split(separator: "\n").dropFirst(2).compactMap {
            $0.split(separator: ":").first.map { $0.filter { !$0.isWhitespace } }
        }
    }

    static func print(cgroup: String) {
        let status = Files.read("/proc/self/status") ?? ""
        func field(_ name: String) -> String {
            for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
                return line.dropFirst(name.count + 1).split(whereSeparator: { $0 == "\t" || $0 == " " }).joined(separator: "/")
            }
            return "?"
        }
        func openResult(_ path: String, _ flags: Int32) -> String {
            let fd = open(path, flags | O_CLOEXEC)
            if fd >= 0 { close(fd); return "opened" }
            let names: [Int32: String] = [ENOENT: "ENOENT", EACCES: "EACCES", EPERM: "EPERM", EROFS: "EROFS"]
            return names[errno] ?? "errno\(errno)"
        }
        // Every thread's effective set, not just this one's.
        let threadCaps = Files.list("/proc/self/task").map { tid in
            (Files.read("/proc/self/task/\(tid)/status") ?? "").split(separator: "\n")
                .first { $0.hasPrefix("CapEff:") }.map { String($0.dropFirst("CapEff:".count).filter { !$0.isWhitespace }) } ?? "?"
        }
        let pids = Files.list("/proc").filter { $0.allSatisfy(\.isNumber) }
        // What each open descriptor is (a path, socket:[inode], anon_inode:kvm-vm, ...).
        let fds = Files.list("/proc/self/fd").compactMap { fd -> String? in
            var target = [CChar](repeating: 0, count: 512)
            let n = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
            guard n > 0 else { return nil }
            return "\(fd):" + String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let cgroups = cgroup.split(separator: "\n").map { $0.split(separator: ":", maxSplits: 1).last.map(String.init) ?? "" }
        let items = [
            "uid=\(field("Uid"))", "gid=\(field("Gid"))", "groups=\(field("Groups"))",
            "capeff=\(field("CapEff"))", "capprm=\(field("CapPrm"))", "capinh=\(field("CapInh"))",
            "capbnd=\(field("CapBnd"))", "capamb=\(field("CapAmb"))", "threadcapeff=\(threadCaps.joined(separator: "/"))",
            "nonewprivs=\(field("NoNewPrivs"))", "pids=\(pids.joined(separator: "/"))",
            "root=\(Files.list("/").joined(separator: "/"))",
            "etc-hostname=\(openResult("/etc/hostname", O_RDONLY))", "dev-kvm=\(openResult("/dev/kvm", O_RDWR))",
            "write-root=\(openResult("/kiln-probe", O_WRONLY | O_CREAT))",
            "netdevs=\(netDevices().joined(separator: "/"))",
            "cgroup=\(cgroups.joined(separator: ";"))",
            "fds=\(fds.joined(separator: ",").filter { $0 != " " })",
        ]
        writeRaw(2, "KILN-JAIL-REPORT " + items.joined(separator: " ") + "\n")
    }
}
#endif
