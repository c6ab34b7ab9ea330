import AgentProtocol
import CLinux
import Glibc
import LinuxSys

/// Each command the agent starts runs in a cgroup of its own (cgroup v2, pids controller only:
/// the guest kernel has nothing else), so that a fork bomb hits the command's `pids.max` instead
/// of the guest's pid space and memory, which the agent needs to keep answering; and so that a
/// kill reaches every descendant at once (`cgroup.kill`), daemonized or not. The agent itself
/// stays in the root cgroup, outside every limit (docs/agent-protocol.md, "Limits").
final class CommandCgroups {
    static let root = "/sys/fs/cgroup"
    /// A guest process costs most of a second to start here; 1024 is far more than a command
    /// needs and few enough that the guest keeps memory and pids for the agent.
    static let defaultPids: UInt32 = 1024

    /// Cgroups of commands that are gone, waiting for their last process to be reaped.
    private var leftovers: Set<String> = []

    private init() {}

    /// Mounts cgroup2 where GuestInit did not and enables the pids controller for the children
    /// of the root; nil (said on the console) when the kernel cannot, and commands then run
    /// without a cgroup.
    static func setUp() -> CommandCgroups? {
        _ = mkdir(root, 0o755)
        if access(root + "/cgroup.controllers", F_OK) != 0
            && kiln_mount("cgroup2", root, "cgroup2", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil) != 0 && errno != EBUSY {
            writeRaw(2, "kiln-agent: mount cgroup2 on \(root): \(String(cString: strerror(errno))); commands run without limits\n")
            return nil
        }
        if let e = write("+pids", to: root + "/cgroup.subtree_control") {
            writeRaw(2, "kiln-agent: enable the pids controller: \(String(cString: strerror(e))); commands run without limits\n")
            return nil
        }
        // A thousand runnable processes of a command would otherwise leave the agent one
        // thousandth of the vCPU: at nice -10 it gets about nine times a command process's share
        // and can still act on a timeout. Each command is reset to 0 in kiln_spawn.
        _ = kiln_raise_priority(-10)
        return CommandCgroups()
    }

    static func path(_ id: UInt64) -> String { root + "/kiln-command-\(id)" }

    /// Makes the cgroup of command `id` with `pids` as its pids.max and opens its cgroup.procs
    /// for the child to join; the path and the descriptor (close-on-exec), or the errno.
    func create(_ id: UInt64, pids: UInt32) -> Result<(path: String, procs: Int32), Failure> {
        let dir = Self.path(id)
        if mkdir(dir, 0o755) != 0 && errno != EEXIST { return .failure(Self.failure("create the command's cgroup", errno)) }
        if let e = Self.write(String(pids), to: dir + "/pids.max") {
            _ = rmdir(dir)
            return .failure(Self.failure("set pids.max to \(pids)", e))
        }
        let fd = open(dir + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            _ = rmdir(dir)
            return .failure(Self.failure("open the command's cgroup", e))
        }
        return .success((dir, fd))
    }

    /// SIGKILL to every process in the cgroup, at once, however many it forks meanwhile.
    static func kill(_ path: String) {
        _ = write("1", to: path + "/cgroup.kill")
    }

    /// The command is gone from the agent's table: remove its cgroup now or, while processes
    /// (a background child, killed ones not yet reaped) are still in it, after a later reap.
    func release(_ path: String) {
        if rmdir(path) != 0 && errno != ENOENT { leftovers.insert(path) }
    }

    /// After reaping: remove the cgroups that emptied.
    func removeEmpty() {
        for path in leftovers where rmdir(path) == 0 || errno == ENOENT { leftovers.remove(path) }
    }

    /// Writes `text` to a cgroup file; the errno on failure.
    static func write(_ text: String, to path: String) -> Int32? {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let n = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        return n == text.utf8.count ? nil : (n < 0 ? errno : EIO)
    }

    static func failure(_ what: String, _ code: Int32) -> Failure {
        Failure(errno: code, message: "cannot \(what): \(String(cString: strerror(code)))")
    }
}
