import CSandbox
import Glibc
import LinuxSys

/// The limits one VM's cgroup enforces.
public struct CgroupLimits: Sendable, Equatable {
    public var memoryBytes: UInt64
    /// CPU time per 100 ms period, in microseconds (cpus × 100 000 lets each vCPU run flat out).
    public var cpuQuotaMicros: Int
    public static let cpuPeriodMicros = 100_000
    public var pids: Int

    public init(memoryBytes: UInt64, cpuQuotaMicros: Int, pids: Int) {
        self.memoryBytes = memoryBytes; self.cpuQuotaMicros = cpuQuotaMicros; self.pids = pids
    }
}

/// A VM's leaf cgroup: `kiln/<id>` under cgroup v2's root, or on cgroup v1 hosts one
/// `kiln/<id>` per controller (memory, cpu, pids) under the cgroup Kiln itself runs in.
public struct Cgroup: Sendable {
    public enum Version: Sendable { case v1, v2 }
    public let version: Version
    /// The leaf directories: one on v2; memory, cpu and pids on v1 (in that order, those present).
    public let directories: [String]

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Where the `kiln` parents live on this host, mounting cgroupfs privately under
    /// /run/kiln/cgroup when /sys/fs/cgroup is not there (`ip netns exec` remounts /sys).
    static func parents() throws(Failure) -> (Version, [(controller: String, path: String)]) {
        let hierarchies = Files.read("/proc/cgroups") ?? ""
        var v1: [String: Bool] = [:]
        for line in hierarchies.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            if f.count >= 4 { v1[String(f[0])] = f[1] != "0" && f[3] == "1" }
        }
        let mounts = MountTable.current()
        if v1["memory"] == true {
            var parents: [(String, String)] = []
            for controller in ["memory", "cpu", "pids"] where v1[controller] == true {
                var mount: MountTable.Mount
                if let found = mounts.v1(controller) { mount = found } else { mount = try mountPrivately(controller) }
                let own = ownPath(controller: controller)
                let relative = mount.root == "/" ? own : String(own.dropFirst(mount.root.count))
                parents.append((controller, mount.point + relative + "/kiln"))
            }
            return (.v1, parents)
        }
        var mount: MountTable.Mount
        if let found = mounts.v2() { mount = found } else { mount = try mountPrivately(nil) }
        return (.v2, [("", mount.point + "/kiln")])
    }

    /// Creates the leaf for VM `id` and writes its limits.
    public static func create(id: String, limits: CgroupLimits) throws(Failure) -> Cgroup {
        let (version, parents) = try parents()
        var dirs: [String] = []
        do throws(Errno) {
            for parent in parents {
                try Files.makeDirectories(parent.path)
                if version == .v2 {
                    // Controllers must be enabled in every ancestor's subtree_control (the root's too).
                    let root = String(parent.path.dropLast("/kiln".count))
                    for c in ["+memory", "+cpu", "+pids"] {
                        try? Files.write(root + "/cgroup.subtree_control", c)
                        try? Files.write(parent.path + "/cgroup.subtree_control", c)
                    }
                }
                let leaf = parent.path + "/" + id
                if mkdir(leaf, 0o755) != 0 { throw Errno.current("mkdir \(leaf)") }
                dirs.append(leaf)
                switch (version, parent.controller) {
                case (.v2, _):
                    try Files.write(leaf + "/memory.max", "\(limits.memoryBytes)")
                    try? Files.write(leaf + "/memory.swap.max", "0")
                    try Files.write(leaf + "/cpu.max", "\(limits.cpuQuotaMicros) \(CgroupLimits.cpuPeriodMicros)")
                    try Files.write(leaf + "/pids.max", "\(limits.pids)")
                case (.v1, "memory"):
                    try Files.write(leaf + "/memory.limit_in_bytes", "\(limits.memoryBytes)")
                    try? Files.write(leaf + "/memory.memsw.limit_in_bytes", "\(limits.memoryBytes)")
                case (.v1, "cpu"):
                    try Files.write(leaf + "/cpu.cfs_period_us", "\(CgroupLimits.cpuPeriodMicros)")
                    try Files.write(leaf + "/cpu.cfs_quota_us", "\(limits.cpuQuotaMicros)")
                case (.v1, "pids"):
                    try Files.write(leaf + "/pids.max", "\(limits.pids)")
                default: break
                }
            }
        } catch {
            Cgroup(version: version, directories: dirs).remove()
            throw Failure(description: "cannot set up the VM's cgroup: \(error)")
        }
        return Cgroup(version: version, directories: dirs)
    }

    /// Moves process `pid` (and its future threads and children) into the cgroup.
    public func add(pid: pid_t) throws(Failure) {
        for dir in directories {
            do { try Files.write(dir + "/cgroup.procs", "\(pid)") }
            catch { throw Failure(description: "cannot move the VMM into \(dir): \(error)") }
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    public var oomKills: Int {
        for dir in directories {
            let text = Files.read(dir + (version == .v2 ? "/memory.events" : "/memory.oom_control")) ?? ""
            for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
                return Int(line.dropFirst("oom_kill ".count)) ?? 0
            }
        }
        return 0
    }

    /// Kills whatever is left inside and removes the directories.
    public func remove() { for dir in directories { Cgroup.removeLeaf(dir) } }

    static func removeLeaf(_ dir: String) {
        _ = try? Files.write(dir + "/cgroup.kill", "1")
        for _ in 0..<200 {
            for pid in (Files.read(dir + "/cgroup.procs") ?? "").split(separator: "\n").compactMap({ pid_t($0) }) {
                kill(pid, SIGKILL)
            }
            if rmdir(dir) == 0 || errno == ENOENT { return }
            usleep(5_000) // a killed task leaves the cgroup once it has fully exited
        }
    }

    /// Removes the leaves of VMs whose supervisor is gone (see `JailDirectory.isStale`).
    static func sweep(isStale: (String) -> Bool) {
        guard let (_, parents) = try? parents() else { return }
        for parent in parents {
            for name in Files.list(parent.path) where isStale(name) {
                let dir = parent.path + "/" + name
                var st = stat()
                if stat(dir, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { removeLeaf(dir) }
            }
        }
    }

    /// The cgroup this process is in for `controller` (v1), from /proc/self/cgroup.
    static func ownPath(controller: String) -> String {
        for line in (Files.read("/proc/self/cgroup") ?? "").split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if f.count == 3 && f[1].split(separator: ",").contains(Substring(controller)) {
                return f[2] == "/" ? "" : String(f[2])
            }
        }
        return ""
    }

    static func mountPrivately(_ controller: String?) throws(Failure) -> MountTable.Mount {
        let point = "/run/kiln/cgroup/" + (controller ?? "unified")
        do { try Files.makeDirectories(point) } catch { throw Failure(description: "cannot mount cgroupfs: \(error)") }
        let candidates = controller.map { $0 == "cpu" ? ["cpu", "cpu,cpuacct"] : [$0] } ?? [""]
        for options in candidates {
            let rc = controller == nil ? mount("cgroup2", point, "cgroup2", 0, nil)
                                       : mount("cgroup", point, "cgroup", 0, options)
            if rc == 0 || errno == EBUSY { return MountTable.Mount(point: point, root: "/") }
        }
        throw Failure(description: "cannot mount the \(controller ?? "cgroup2") hierarchy at \(point): \(Errno.current("mount"))")
    }
}

/// Cgroup mounts from /proc/self/mountinfo.
struct MountTable {
    struct Mount { let point: String; let root: String }
    var entries: [(fstype: String, options: [Substring], mount: Mount)] = []

    static func current() -> MountTable { parse(Files.read("/proc/self/mountinfo") ?? "") }

    static func parse(_ mountinfo: String) -> MountTable {
        var table = MountTable()
        for line in mountinfo.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1).map { $0.split(separator: " ") }
            guard halves.count == 2, halves[0].count >= 5, halves[1].count >= 3 else { continue }
            table.entries.append((String(halves[1][0]), halves[1][2].split(separator: ","),
                                  Mount(point: String(halves[0][4]), root: String(halves[0][3]))))
        }
        return table
    }

    func v1(_ controller: String) -> Mount? {
        entries.last { $0.fstype == "cgroup" && $0.options.contains(Substring(controller)) }?.mount
    }

    func v2() -> Mount? { entries.last { $0.fstype == "cgroup2" }?.mount }
}
