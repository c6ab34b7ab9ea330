import CSandbox
import Glibc
import LinuxSys
import VMMProtocol

/// The jailed VMM's side: runs in the child `kiln-vmm` (PID 1 of its own PID namespace, in
/// new mount, IPC and UTS namespaces, already in its cgroup), still root with every capability.
/// `prepare` comes first; the VMM then opens everything it needs (/dev/kvm, kernel, disks, TAP,
/// vsock listener) and `enter` locks it in before the guest runs an instruction.
public enum Confinement {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ what: String, _ error: Errno = Errno.current("")) { description = "jail: \(what): \(error)" }
    }

    /// Makes every mount private so nothing below propagates back to the host.
    public static func prepare() throws(Failure) {
        if mount(nil, "/", nil, UInt(KILN_MS_REC | KILN_MS_PRIVATE), nil) != 0 { throw Failure("make / private") }
    }

    /// Network and cgroup namespaces, a fresh root, limits, then the credentials and capabilities:
    /// after this the process holds only the descriptors it opened, as an unprivileged user.
    public static func enter(_ spec: JailSpec) throws(Failure) {
        #if DEBUG
        let report = getenv("KILN_TEST_JAIL_REPORT") != nil
        let cgroupBefore = Files.read("/proc/self/cgroup") ?? ""
        #endif
        guard threadCount() == 1 else { throw Failure("the VMM must be single-threaded here (capabilities are per thread)", Errno(EBUSY)) }

        // An empty network namespace: the TAP (already open) is the VMM's only way to any network.
        if kiln_unshare(Int32(KILN_CLONE_NEWNET | KILN_CLONE_NEWCGROUP)) != 0 { throw Failure("unshare net, cgroup") }

        // The new root: a small tmpfs holding /dev/null, /dev/urandom and this PID namespace's /proc.
        let root = spec.root
        if mount("kiln-jail", root, "tmpfs", UInt(KILN_MS_NOSUID | KILN_MS_NOEXEC), "size=64k,nr_inodes=64,mode=0755") != 0 {
            throw Failure("mount tmpfs on \(root)")
        }
        for dir in ["/dev", "/proc"] where mkdir(root + dir, 0o755) != 0 { throw Failure("mkdir \(dir)") }
        for (name, minor) in [("null", 3), ("urandom", 9)] {
            if kiln_mknod_char(root + "/dev/" + name, 0o666, 1, UInt32(minor)) != 0 { throw Failure("mknod /dev/\(name)") }
            _ = chmod(root + "/dev/" + name, 0o666)
        }
        if mount("proc", root + "/proc", "proc", UInt(KILN_MS_NOSUID | KILN_MS_NODEV | KILN_MS_NOEXEC), nil) != 0 {
            throw Failure("mount /proc")
        }
        // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no way back.
        if chdir(root) != 0 { throw Failure("chdir \(root)") }
        if kiln_pivot_root(".", ".") != 0 { throw Failure("pivot_root") }
        if umount2(".", Int32(KILN_MNT_DETACH)) != 0 { throw Failure("detach the old root") }
        if chdir("/") != 0 { throw Failure("chdir /") }
        if mount(nil, "/", nil, UInt(KILN_MS_REMOUNT | KILN_MS_BIND | KILN_MS_RDONLY | KILN_MS_NOSUID | KILN_MS_NOEXEC), nil) != 0 {
            throw Failure("remount / read-only")
        }

        if kiln_set_rlimit(Int32(KILN_RLIMIT_NOFILE), spec.openFiles) != 0 { throw Failure("RLIMIT_NOFILE") }
        if kiln_set_rlimit(Int32(KILN_RLIMIT_FSIZE), spec.fileSize) != 0 { throw Failure("RLIMIT_FSIZE") }
        if kiln_set_rlimit(Int32(KILN_RLIMIT_CORE), 0) != 0 { throw Failure("RLIMIT_CORE") }
        clearEnvironment()

        // Bounding set first (it needs CAP_SETPCAP), then the ids (which clear the permitted and
        // effective sets), then whatever is left; no_new_privs so no exec can regain anything.
        if kiln_drop_bounding_set() != 0 { throw Failure("drop the capability bounding set") }
        if kiln_set_ids(spec.uid, spec.gid) != 0 { throw Failure("setresuid \(spec.uid) / setresgid \(spec.gid)") }
        if kiln_drop_capabilities() != 0 { throw Failure("capset") }
        if kiln_no_new_privs() != 0 { throw Failure("no_new_privs") }
        // A credential change clears the parent-death signal; a tied VMM must not outlive its
        // supervisor (a detached one is meant to).
        if !spec.detached && kiln_set_pdeathsig(SIGKILL) != 0 { throw Failure("PR_SET_PDEATHSIG") }
        // No core dumps of guest memory, and /proc/1 is root's, not the jail user's.
        if kiln_set_dumpable(0) != 0 { throw Failure("PR_SET_DUMPABLE") }

        #if DEBUG
        if report { JailReport.print(cgroup: cgroupBefore) }
        #endif
    }

    static func threadCount() -> Int {
        for line in (Files.read("/proc/self/status") ?? "").split(separator: "\n") where line.hasPrefix("Threads:") {
            return Int(line.dropFirst("Threads:".count).trimmingPrefix(while: { $0 == "\t" || $0 == " " })) ?? 0
        }
        return 0
    }

    static func clearEnvironment() {
        var names: [String] = []
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            names.append(String(s.prefix { $0 != "=" }))
            e += 1
        }
        for name in names {
            #if DEBUG
            // Debug builds keep the test hooks' switches (KILN_TEST_*) that threads read later.
            if name.hasPrefix("KILN_TEST_") { continue }
            #endif
            unsetenv(name)
        }
    }
}
