import Glibc
import LinuxSys

/// Timestamps of boot milestones on stderr, for the benchmarks: set KILN_BOOT_TRACE=1.
/// Times are CLOCK_MONOTONIC nanoseconds, comparable with the launching process's clock.
public enum BootTrace {
    static let enabled = getenv("KILN_BOOT_TRACE") != nil

    public static func mark(_ event: String) {
        guard enabled else { return }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        writeRaw(2, "kiln-trace: \(event) \(Int(ts.tv_sec) * 1_000_000_000 + ts.tv_nsec)\n")
    }
}
