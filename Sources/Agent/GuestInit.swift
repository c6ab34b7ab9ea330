import CLinux
import Glibc
import LinuxSys

/// What PID 1 sets up before it serves: the filesystems a Linux userland expects, a hostname,
/// the loopback interface and a sane umask.
public enum GuestInit {
    static let mounts: [(source: String, target: String, type: String, flags: UInt, data: String?)] = [
        ("proc", "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
        ("sysfs", "/sys", "sysfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
        // For the per-command pids limits (CommandCgroups).
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
        ("devtmpfs", "/dev", "devtmpfs", UInt(MS_NOSUID), "mode=0755"),
        ("devpts", "/dev/pts", "devpts", UInt(MS_NOSUID | MS_NOEXEC), "mode=0620,ptmxmode=0666"),
        ("tmpfs", "/dev/shm", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"),
        ("tmpfs", "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"),
        ("tmpfs", "/run", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755"),
    ]

    /// Problems are reported on the console and are not fatal: a command may not need them.
    public static func setUp(hostname: String = "kiln") {
        umask(0o022)
        for m in mounts {
            _ = mkdir(m.target, 0o755)
            if kiln_mount(m.source, m.target, m.type, UInt(m.flags), m.data) != 0 && errno != EBUSY {
                writeRaw(2, "kiln-agent: mount \(m.target): \(String(cString: strerror(errno)))\n")
            }
        }
        _ = symlink("/proc/self/fd", "/dev/fd")
        _ = symlink("/proc/self/fd/0", "/dev/stdin")
        _ = symlink("/proc/self/fd/1", "/dev/stdout")
        _ = symlink("/proc/self/fd/2", "/dev/stderr")
        _ = sethostname(hostname, hostname.utf8.count)
        if kiln_link_up("lo") != 0 { writeRaw(2, "kiln-agent: lo: \(String(cString: strerror(errno)))\n") }
    }
}
