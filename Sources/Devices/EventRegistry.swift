import LinuxSys

/// The device thread's event loop as devices see it: a backend (a TAP device, a listening
/// socket) registers its file descriptor and gets its handler run on that thread.
public protocol EventRegistry: AnyObject, Sendable {
    /// Runs `handler` on the device thread whenever `fd` is readable.
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno)
    /// Changes what wakes `fd`'s handler (it runs on either); with neither, `fd` is parked,
    /// not even woken by a hang-up, until interest returns.
    func setInterest(_ fd: Int32, readable: Bool, writable: Bool)
    /// Stops watching `fd` (before the device closes it).
    func unwatch(_ fd: Int32)
}

/// A registry that watches nothing: for driving a device directly (tests, benchmarks, fuzzing)
/// where no backend file descriptor needs a device thread.
public final class NoEventLoop: EventRegistry {
    public init() {}
    public func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) {}
    public func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {}
    public func unwatch(_ fd: Int32) {}
}
