import FuzzSupport
import Devices
import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// Fuzzes virtio-net as a hostile guest drives it: the input becomes a small guest memory (both
/// rings, descriptors, transmit headers and frames) plus the features the driver negotiated, and
/// a few frames with headers of the input's choosing arrive from the backend (a socket pair
/// standing in for the TAP, with offloads offered).
let memorySize = 64 << 10
nonisolated(unsafe) var memory: GuestMemory! = nil
nonisolated(unsafe) var host: Int32 = -1
nonisolated(unsafe) var device: VirtioNet! = nil
let events = Handlers()

/// The device thread's registry, run by hand: every watched handler once per `fire`.
final class Handlers: EventRegistry {
    let watched = Mutex<[Int32: @Sendable () -> Void]>([:])
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) { watched.withLock { $0[fd] = handler } }
    func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {}
    func unwatch(_ fd: Int32) { _ = watched.withLock { $0.removeValue(forKey: fd) } }
    func fire() { for h in watched.withLock({ Array($0.values) }) { h() } }
}

func queue(_ sizeByte: UInt8, _ rings: UnsafePointer<UInt8>) -> Virtqueue {
    var q = Virtqueue()
    q.size = UInt16(1) << (sizeByte % 9) // 1...256
    q.descriptorTable = UInt64(rings[0] & 0xF0) << 8
    q.availableRing = UInt64(rings[1] & 0xFE) << 8
    q.usedRing = UInt64(rings[2] & 0xFC) << 8
    q.eventIndex = sizeByte & 0x80 != 0
    q.ready = q.validate(memory)
    return q
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if memory == nil {
        memory = try! GuestMemory(layout: [(0, memorySize)])
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        var big: Int32 = 1 << 20
        setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, 4)
        host = fds[1]
        device = try! VirtioNet(backend: FileDescriptor(owning: fds[0]), name: "fuzz", mac: [2, 0, 0, 0, 0, 1], offloads: { _ in })
    }
    // 0-1: queue sizes; 2-7: ring positions; 8-15: features; 16-27: backend frame header; 28-31: frames.
    let prefix = 32
    guard size >= prefix else { return 0 }
    try! memory.fill(0, count: memorySize, at: 0)
    try! memory.write(UnsafeRawBufferPointer(start: data + prefix, count: min(size - prefix, memorySize)), at: 0)
    let rx = queue(data[0], data + 2), tx = queue(data[1], data + 5)
    guard rx.ready, tx.ready else { return 0 }
    var features: UInt64 = 0
    for i in 0..<8 { features |= UInt64(data[8 + i]) << (8 * UInt64(i)) }
    features &= device.features
    device.activate(queues: [rx, tx], context: VirtioContext(memory: memory, features: features,
                                                             interrupt: {}, fail: { _ in }, events: events))
    device.process(queue: 1)
    // Frames from the backend: the input's header, lengths from 28-31, bytes from the input.
    for k in 0..<Int(data[28] & 3) {
        let length = 12 + Int(data[29 + k]) * 37
        var frame = [UInt8](repeating: 0, count: length)
        for i in 0..<min(12, length) { frame[i] = data[16 + i] }
        for i in 12..<length where prefix + i < size { frame[i] = data[prefix + i] }
        _ = send(host, frame, frame.count, 0)
    }
    events.fire()
    device.process(queue: 0)
    events.fire()
    device.process(queue: 1)
    device.reset()
    events.fire()
    // Drain what reached the backend (the socket is nonblocking), so the socket pair never fills.
    var sink = [UInt8](repeating: 0, count: 70000)
    while recv(host, &sink, sink.count, 0) > 0 {}
    return 0
}

// SwiftPM links an executable's entry point as FuzzNet_main; hand control to libFuzzer.
@_cdecl("FuzzNet_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
