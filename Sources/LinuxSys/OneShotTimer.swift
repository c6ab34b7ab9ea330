import CLinux
import Glibc

/// Nanoseconds on CLOCK_MONOTONIC: the clock timers and rate limits are measured on.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// A one-shot CLOCK_MONOTONIC timerfd: readable once it expires, until `acknowledge()`. A device
/// registers `fd` with its event loop and arms the timer to be woken later on the same thread.
public final class OneShotTimer: Sendable {
    public let fd: Int32

    public init() throws(Errno) {
        fd = try once("timerfd_create") { timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC)) }
    }

    deinit { Glibc.close(fd) }

    /// Expires after `nanoseconds` (at least 1: an all-zero value would disarm it), replacing any
    /// earlier deadline.
    public func arm(after nanoseconds: UInt64) {
        let ns = max(nanoseconds, 1)
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(ns / 1_000_000_000)
        spec.it_value.tv_nsec = Int(ns % 1_000_000_000)
        timerfd_settime(fd, 0, &spec, nil)
    }

    public func disarm() {
        var spec = itimerspec()
        timerfd_settime(fd, 0, &spec, nil)
    }

    /// Nanoseconds until it expires; 0 when disarmed or expired.
    public var remaining: UInt64 {
        var spec = itimerspec()
        timerfd_gettime(fd, &spec)
        return UInt64(spec.it_value.tv_sec) * 1_000_000_000 + UInt64(spec.it_value.tv_nsec)
    }

    /// Clears the expiration so that a level-triggered loop stops reporting the fd.
    public func acknowledge() {
        var count: UInt64 = 0
        _ = Glibc.read(fd, &count, 8)
    }
}
