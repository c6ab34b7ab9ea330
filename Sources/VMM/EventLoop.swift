import CLinux
import Devices
import Glibc
import LinuxSys
import Synchronization

/// The device thread: waits on eventfds (queue notifications, backends) with epoll and runs
/// their handlers, so device work stays off the vCPU threads.
final class EventLoop: EventRegistry {
    private let epoll: Int32
    private let handlers = Mutex<[Int32: Watch]>([:])

    struct Watch {
        let handler: @Sendable () -> Void
        /// The epoll events asked for; 0 means the fd is out of the epoll set (parked).
        var events: UInt32
    }

    init() throws(Errno) {
        epoll = try once("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    deinit { Glibc.close(epoll) }

    /// Runs `handler` on the loop thread whenever `fd` is readable (level-triggered) until `setInterest` changes that.
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) {
        handlers.withLock { $0[fd] = Watch(handler: handler, events: EPOLLIN.rawValue) }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = fd
        _ = try once("epoll_ctl") { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }
    }

    func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {
        let wanted = (readable ? EPOLLIN.rawValue : 0) | (writable ? EPOLLOUT.rawValue : 0)
        handlers.withLock { table in
            guard let old = table[fd]?.events, old != wanted else { return }
            table[fd]?.events = wanted
            var event = epoll_event()
            event.events = wanted
            event.data.fd = fd
            // Parking removes the fd from the set: epoll reports a hang-up even with no events asked for.
            if wanted == 0 { epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
            else { epoll_ctl(epoll, old == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event) }
        }
    }

    func unwatch(_ fd: Int32) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        _ = handlers.withLock { $0.removeValue(forKey: fd) }
    }

    /// Serves events until `stop` becomes readable; parks between handlers while `gate` is closed.
    func run(stop: Int32, gate: PauseGate? = nil) {
        var stopEvent = epoll_event()
        stopEvent.events = EPOLLIN.rawValue
        stopEvent.data.fd = stop
        epoll_ctl(epoll, EPOLL_CTL_ADD, stop, &stopEvent)
        if let gate {
            var kick = epoll_event()
            kick.events = EPOLLIN.rawValue
            kick.data.fd = gate.deviceKick
            epoll_ctl(epoll, EPOLL_CTL_ADD, gate.deviceKick, &kick)
        }
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while true {
            let n = epoll_wait(epoll, &events, Int32(events.count), -1)
            if n < 0 { if errno == EINTR { continue } else { return } }
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                if fd == stop { return }
                if let gate, gate.isPaused {
                    var value: UInt64 = 0
                    _ = Glibc.read(gate.deviceKick, &value, 8)
                    gate.park(stop: stop) // events stay pending in epoll (level-triggered) until resume
                    break
                }
                if let gate, fd == gate.deviceKick { var value: UInt64 = 0; _ = Glibc.read(fd, &value, 8); continue }
                if let watch = handlers.withLock({ $0[fd] }), watch.events != 0 { watch.handler() }
            }
        }
    }
}
