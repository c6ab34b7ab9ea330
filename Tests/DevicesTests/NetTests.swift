import Glibc
import GuestMemory
import LinuxSys
import Synchronization
import Testing
@testable import Devices

/// The device thread's registry, driven by hand: a test runs the watched handler itself.
final class ManualEvents: EventRegistry {
    let watched = Mutex<[Int32: @Sendable () -> Void]>([:])
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) {
        try watched.withLock { w throws(Errno) in
            guard w[fd] == nil else { throw Errno(EEXIST, call: "watch") }
            w[fd] = handler
        }
    }
    func unwatch(_ fd: Int32) { _ = watched.withLock { $0.removeValue(forKey: fd) } }
    func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {}
    var isWatching: Bool { watched.withLock { !$0.isEmpty } }
    /// Runs the handlers as a level-triggered loop would for a readable fd.
    func fire() { for h in watched.withLock({ Array($0.values) }) { h() } }
}

/// What the device told its transport: interrupts raised, failures reported.
final class DeviceLog: Sendable {
    let interrupts = Atomic<Int>(0)
    let failures = Mutex<[String]>([])
}

/// A virtio-net device on one end of a SEQPACKET socket pair (one frame per message, EOF when closed), with split rings in a fake guest memory.
final class NetRig {
    static let size: UInt16 = 16
    static let rxDesc: UInt64 = 0x1000, rxAvail: UInt64 = 0x2000, rxUsed: UInt64 = 0x3000
    static let txDesc: UInt64 = 0x4000, txAvail: UInt64 = 0x5000, txUsed: UInt64 = 0x6000
    static let data: UInt64 = 0x10000
    let memory: GuestMemory
    let device: VirtioNet
    var host: Int32
    let events = ManualEvents()
    let log = DeviceLog()
    var interrupts: Int { log.interrupts.load(ordering: .relaxed) }
    var failures: [String] { log.failures.withLock { $0 } }
    var nextDescriptor: [UInt16] = [0, 0]
    var availIndex: [UInt16] = [0, 0]
    var nextData = NetRig.data

    init() throws {
        memory = try GuestMemory(layout: [(0, 0x100000)])
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        host = fds[1]
        device = VirtioNet(backend: FileDescriptor(owning: fds[0]), name: "test", mac: [2, 0, 0, 0, 0, 1])
    }

    deinit { if host >= 0 { close(host) } }

    func activate() {
        var rx = Virtqueue(), tx = Virtqueue()
        rx.size = NetRig.size; rx.descriptorTable = NetRig.rxDesc; rx.availableRing = NetRig.rxAvail; rx.usedRing = NetRig.rxUsed
        tx.size = NetRig.size; tx.descriptorTable = NetRig.txDesc; tx.availableRing = NetRig.txAvail; tx.usedRing = NetRig.txUsed
        rx.ready = true; tx.ready = true
        let log = self.log
        device.activate(queues: [rx, tx], context: VirtioContext(
            memory: memory, features: device.features,
            interrupt: { log.interrupts.add(1, ordering: .relaxed) },
            fail: { reason in log.failures.withLock { $0.append(reason) } }, events: events))
    }

    /// Puts a chain of buffers (address, length, writable) on queue `q`'s available ring.
    @discardableResult
    func offer(_ q: Int, _ buffers: [(address: UInt64, length: UInt32, writable: Bool)], loop: Bool = false) throws -> UInt16 {
        let table = q == 0 ? NetRig.rxDesc : NetRig.txDesc, avail = q == 0 ? NetRig.rxAvail : NetRig.txAvail
        let head = nextDescriptor[q]
        for (i, b) in buffers.enumerated() {
            let index = head + UInt16(i)
            let d = table + UInt64(index) * 16
            let last = i == buffers.count - 1
            try memory.write(b.address, at: d)
            try memory.write(b.length, at: d + 8)
            try memory.write(UInt16((last && !loop ? 0 : 1) | (b.writable ? 2 : 0)), at: d + 12)
            try memory.write(last && loop ? head : index + 1, at: d + 14)
        }
        nextDescriptor[q] += UInt16(buffers.count)
        try memory.write(head, at: avail + 4 + 2 * UInt64(availIndex[q] % NetRig.size))
        availIndex[q] &+= 1
        try memory.write(availIndex[q], at: avail + 2)
        return head
    }

    /// Copies `bytes` into fresh guest memory and returns a readable buffer over them.
    func stage(_ bytes: [UInt8]) throws -> (address: UInt64, length: UInt32, writable: Bool) {
        let address = nextData
        try memory.write(bytes, at: address)
        nextData += 0x1000
        return (address, UInt32(bytes.count), false)
    }

    func space(_ length: UInt32) -> (address: UInt64, length: UInt32, writable: Bool) {
        defer { nextData += 0x1000 }
        return (nextData, length, true)
    }

    func used(_ q: Int) throws -> (index: UInt16, elements: [(id: UInt32, length: UInt32)]) {
        let ring = q == 0 ? NetRig.rxUsed : NetRig.txUsed
        let index = try memory.read(UInt16.self, at: ring + 2)
        let elements = try (0..<index).map { i in
            (try memory.read(UInt32.self, at: ring + 4 + 8 * UInt64(i)), try memory.read(UInt32.self, at: ring + 8 + 8 * UInt64(i)))
        }
        return (index, elements)
    }

    func hostSend(_ bytes: [UInt8]) { #expect(send(host, bytes, bytes.count, 0) == bytes.count) }

    func hostReceive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70000)
        let n = recv(host, &buffer, buffer.count, 0)
        return n < 0 ? nil : Array(buffer[0..<n])
    }
}

@Suite struct VirtioNetTests {
    let header = [UInt8](repeating: 0, count: VirtioNet.headerSize)

    @Test func configSpaceHoldsMACAndLinkUp() {
        let rig = try! NetRig()
        var config = [UInt8](repeating: 0xEE, count: 10)
        config.withUnsafeMutableBytes { rig.device.readConfig(offset: 0, into: $0) }
        #expect(config == [2, 0, 0, 0, 0, 1, 1, 0, 0, 0])
        #expect(rig.device.deviceID == 1 && rig.device.queueCount == 2)
        #expect(rig.device.features & (1 << 5) != 0, "MAC")
        #expect(rig.device.features & ((1 << 0) | (1 << 11) | (1 << 15)) == 0, "no checksum, TSO or mergeable-buffer offloads")
    }

    @Test func transmitGathersAChainIntoOneFrameWithAZeroedHeader() throws {
        let rig = try NetRig()
        rig.activate()
        let garbageHeader: [UInt8] = [1, 4, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
        let frame = (0..<60).map { UInt8($0) }
        let head = try rig.offer(1, [try rig.stage(Array(garbageHeader[0..<5])), try rig.stage(Array(garbageHeader[5...]) + frame[0..<20]),
                                     try rig.stage(Array(frame[20...]))])
        rig.device.process(queue: 1)
        #expect(rig.hostReceive() == header + frame)
        let used = try rig.used(1)
        #expect(used.index == 1 && used.elements.first?.id == UInt32(head) && used.elements.first?.length == 0)
        #expect(rig.interrupts == 1)
        #expect(rig.device.txFrames.load(ordering: .relaxed) == 1)
        #expect(rig.failures.isEmpty)
    }

    @Test func receivePlacesAFrameAcrossTheChainsBuffers() throws {
        let rig = try NetRig()
        rig.activate()
        #expect(rig.events.isWatching)
        let first = rig.space(10), second = rig.space(1514)
        let head = try rig.offer(0, [first, second])
        let frame = (0..<100).map { UInt8(255 - $0) }
        rig.hostSend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + frame)
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.index == 1 && used.elements.first?.id == UInt32(head) && used.elements.first?.length == 112)
        let placed = try rig.memory.read(10, at: first.address) + rig.memory.read(102, at: second.address)
        #expect(placed == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] + frame, "num_buffers is 1")
        #expect(rig.interrupts == 1)
    }

    @Test func receiveStopsReadingWithoutBuffersAndResumesWhenTheGuestAddsSome() throws {
        let rig = try NetRig()
        rig.activate()
        rig.hostSend(header + [1, 2, 3])
        rig.hostSend(header + [4, 5, 6])
        rig.events.fire()
        #expect(!rig.events.isWatching, "no rx buffers: the fd is not watched (the frames wait in the backend)")
        let a = try rig.offer(0, [rig.space(1526)])
        rig.device.process(queue: 0)
        #expect(rig.events.isWatching)
        rig.events.fire()
        #expect(try rig.used(0).index == 1, "one buffer, one frame; the second waits")
        #expect(!rig.events.isWatching)
        let b = try rig.offer(0, [rig.space(1526)])
        rig.device.process(queue: 0)
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.elements.map(\.id) == [UInt32(a), UInt32(b)])
        #expect(rig.device.rxFrames.load(ordering: .relaxed) == 2 && rig.device.rxDropped.load(ordering: .relaxed) == 0)
    }

    @Test func aFrameTooBigForTheBufferIsDroppedAndTheBufferReused() throws {
        let rig = try NetRig()
        rig.activate()
        let buffer = rig.space(40)
        let head = try rig.offer(0, [buffer])
        rig.hostSend(header + [UInt8](repeating: 7, count: 100))
        rig.hostSend(header + [8, 8])
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.index == 1 && used.elements.first?.id == UInt32(head) && used.elements.first?.length == 14)
        #expect(try rig.memory.read(2, at: buffer.address + 12) == [8, 8])
        #expect(rig.device.rxDropped.load(ordering: .relaxed) == 1)
    }

    @Test func aBackendThatEndsFailsTheDeviceInsteadOfSpinning() throws {
        let rig = try NetRig()
        rig.activate()
        try rig.offer(0, [rig.space(1526)])
        close(rig.host)
        rig.host = -1
        rig.events.fire()
        #expect(rig.failures.count == 1 && !rig.events.isWatching, "\(rig.failures)")
    }

    /// Each malformed request fails the device (the transport sets DEVICE_NEEDS_RESET) and nothing crashes.
    @Test(arguments: ["writable-tx", "short-tx", "tx-outside-memory", "tx-loop", "readable-rx", "rx-outside-memory"])
    func malformedChainsFailTheDevice(_ kind: String) throws {
        let rig = try NetRig()
        rig.activate()
        switch kind {
        case "writable-tx": try rig.offer(1, [try rig.stage(header), rig.space(64)])
        case "short-tx": try rig.offer(1, [try rig.stage([0, 0, 0])])
        case "tx-outside-memory": try rig.offer(1, [(0xFFFF_0000, 64, false)])
        case "tx-loop": try rig.offer(1, [try rig.stage(header), try rig.stage([1])], loop: true)
        case "readable-rx": try rig.offer(0, [try rig.stage(header)])
        default: try rig.offer(0, [(0x00F_F000, 0x2000, true)])
        }
        rig.hostSend(header + [1])
        rig.device.process(queue: kind.hasSuffix("tx") || kind.hasPrefix("tx") ? 1 : 0)
        rig.events.fire()
        #expect(rig.failures.count == 1, "\(rig.failures)")
        #expect(!rig.events.isWatching, "a failed device stops reading its backend")
        rig.device.process(queue: 0)
        rig.device.process(queue: 1)
        #expect(rig.failures.count == 1, "and does nothing more until reset")
        rig.device.reset()
        rig.activate()
        #expect(rig.events.isWatching, "a reset and a new activation bring it back")
    }
}
