import CLinux
import Glibc
import LinuxSys
import Synchronization

/// Where the VM's threads stop while it is paused. vCPU threads park after KVM_RUN returned
/// with nothing pending; the device thread parks between handlers. `resumeFD` is readable
/// exactly while the VM is not paused, so parked threads wait on it with poll.
final class PauseGate: Sendable {
    private let paused = Atomic<Bool>(false)
    private let parked = Atomic<Int>(0)
    /// Readable while running; drained on pause.
    let resumeFD: Int32
    /// Signalled on pause so the device thread's epoll wakes and parks.
    let deviceKick: Int32

    init() throws(Errno) {
        resumeFD = try once("eventfd") { eventfd(1, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        do { deviceKick = try once("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) } }
        catch { Glibc.close(resumeFD); throw error }
    }

    deinit { Glibc.close(resumeFD); Glibc.close(deviceKick) }

    var isPaused: Bool { paused.load(ordering: .acquiring) }
    var parkedCount: Int { parked.load(ordering: .acquiring) }

    /// Closes the gate; returns false if it already was.
    func close() -> Bool {
        guard paused.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return false }
        var value: UInt64 = 0
        _ = Glibc.read(resumeFD, &value, 8)
        var one: UInt64 = 1
        _ = Glibc.write(deviceKick, &one, 8)
        return true
    }

    /// Opens the gate; returns false if it was open.
    func open() -> Bool {
        guard paused.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged else { return false }
        var one: UInt64 = 1
        _ = Glibc.write(resumeFD, &one, 8)
        return true
    }

    /// Blocks the calling thread until the gate opens or `stop` becomes readable.
    func park(stop: Int32) {
        parked.add(1, ordering: .acquiringAndReleasing)
        defer { parked.subtract(1, ordering: .acquiringAndReleasing) }
        waitOpen(stop: stop)
    }

    /// Waits (without counting as parked) while the gate is closed.
    func waitOpen(stop: Int32) {
        var fds = [pollfd(fd: resumeFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while isPaused {
            let n = poll(&fds, 2, -1)
            if n < 0 && errno != EINTR { return }
            if fds[1].revents != 0 { return }
        }
    }

    /// Waits until `count` threads are parked; false if `giveUp` says so first.
    func waitParked(_ count: Int, giveUp: () -> Bool) -> Bool {
        while parkedCount < count {
            if giveUp() { return false }
            usleep(100)
        }
        return true
    }
}
