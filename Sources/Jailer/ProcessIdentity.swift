import CSandbox
import Glibc
import LinuxSys

/// One process, named so that it cannot be confused with a later one that got the same pid:
/// the pid, its start time (/proc/PID/stat field 22) and the host's boot id.
public struct ProcessIdentity: Sendable, Equatable {
    public let pid: pid_t
    public let startTime: UInt64
    public let bootID: String

    public init(pid: pid_t, startTime: UInt64, bootID: String) { self.pid = pid; self.startTime = startTime; self.bootID = bootID }

    /// The identity of the process now at `pid`, nil if there is none.
    public static func of(_ pid: pid_t) -> ProcessIdentity? {
        guard pid > 0, let start = startTime(of: pid) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start, bootID: currentBootID)
    }

    public static var currentBootID: String {
        (Files.read("/proc/sys/kernel/random/boot_id") ?? "").filter { !$0.isWhitespace }
    }

    /// A pidfd for this process if it still runs (not exited, not a zombie); nil otherwise.
    /// The pidfd is opened first and the identity checked after: a match then proves the
    /// pidfd is this process, because a pid is reused only once its holder is gone.
    public func open() -> Int32? {
        guard bootID == ProcessIdentity.currentBootID else { return nil }
        let fd = kiln_pidfd_open(pid)
        guard fd >= 0 else { return nil }
        var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var ready: Int32
        repeat { ready = Glibc.poll(&poll, 1, 0) } while ready < 0 && errno == EINTR
        // Readable: it has exited (a zombie keeps its pid and start time until it is reaped).
        guard ProcessIdentity.startTime(of: pid) == startTime, ready == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Whether this process still runs.
    public var isAlive: Bool {
        guard let fd = open() else { return false }
        close(fd)
        return true
    }

    /// `pid start boot-id`, the form the jail directory's `detached` file holds.
    public var text: String { "\(pid) \(startTime) \(bootID)\n" }

    public init?(text: String) {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count == 3, let pid = pid_t(f[0]), pid > 1, let start = UInt64(f[1]) else { return nil }
        self.init(pid: pid, startTime: start, bootID: String(f[2]))
    }

    /// Field 22 of /proc/PID/stat; the command name (field 2) may hold spaces and parentheses,
    /// so fields are counted from the last ')'.
    static func startTime(of pid: pid_t) -> UInt64? {
        guard let stat = Files.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}
