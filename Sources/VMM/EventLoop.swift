import CLinux
import Devices
import Glibc
import LinuxSys
import Synchronization

/// The device thread: waits on eventfds (queue notifications, backends) with epoll and runs
/// their handlers, so device work stays off the vCPU threads.
final class EventLoop: EventRegistry {
    private let epoll: Int32
    private let handlers = Mutex<[Int32: @Sendable () -> Void]>([:])

    init() throws(Errno) {
        epoll = try once("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    deinit { Glibc.close(epoll) }

    /// Runs `handler` on the loop thread whenever `fd` is readable (level-triggered).
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) {
        handlers.withLock { $0[fd] = handler }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = fd
        _ = try once("epoll_ctl") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
    }

    func unwatch(_ fd: Int32) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        _ = handlers.withLock { $0.removeValue(forKey: fd) }
    }

    /// Serves events until `stop` becomes readable.
    func run(stop: Int32) {
        var stopEvent = epoll_event()
        stopEvent.events = EPOLLIN.rawValue
        stopEvent.data.fd = stop
        epoll_ctl(epoll, EPOLL_CTL_ADD, stop, &stopEvent)
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while true {
            let n = epoll_wait(epoll, &events, Int32(events.count), -1)
            if n < 0 { if errno == EINTR { continue } else { return } }
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                if fd == stop { return }
                if let handler = handlers.withLock({ $0[fd] }) { handler() }
            }
        }
    }
}
