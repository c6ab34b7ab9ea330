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
    func isWatching(_ fd: Int32) -> Bool { watched.withLock { $0[fd] != nil } }
    /// Runs the handlers as a level-triggered loop would for a readable fd.
    func fire() { for h in watched.withLock({ Array($0.values) }) { h() } }
}

/// What the device told its transport: interrupts raised, failures reported.
final class DeviceLog: Sendable {
    let interrupts = Atomic<Int>(0)
    let failures = Mutex<[String]>([])
}

final class OffloadLog: Sendable {
    let calls = Mutex<[TapOffloads]>([])
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

    /// The offloads the device set on its backend, in order (with `offloads: true`).
    let offloadLog = OffloadLog()
    var offloadsSet: [TapOffloads] { offloadLog.calls.withLock { $0 } }

    /// With `offloads`, the backend takes TUNSETOFFLOAD-like calls (recorded), so offloads are offered.
    init(offloads: Bool = false, rxLimit: RateLimit = .unlimited, txLimit: RateLimit = .unlimited,
         clock: @escaping RateClock = monotonicNanoseconds) throws {
        memory = try GuestMemory(layout: [(0, 0x100000)])
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        host = fds[1]
        var control: VirtioNet.OffloadControl?
        if offloads { control = { [offloadLog] o throws(Errno) in offloadLog.calls.withLock { $0.append(o) } } }
        device = try VirtioNet(backend: FileDescriptor(owning: fds[0]), name: "test", mac: [2, 0, 0, 0, 0, 1], offloads: control,
                                   rxLimit: rxLimit, txLimit: txLimit, clock: clock)
    }

    /// Whether the device watches its backend (it may watch its offload signal too).
    var readingBackend: Bool { events.isWatching(device.fd) }

    deinit { if host >= 0 { close(host) } }

    /// Activates the device as a driver that accepted `features` (default: all offered).
    func activate(features: UInt64? = nil) {
        var rx = Virtqueue(), tx = Virtqueue()
        rx.size = NetRig.size; rx.descriptorTable = NetRig.rxDesc; rx.availableRing = NetRig.rxAvail; rx.usedRing = NetRig.rxUsed
        tx.size = NetRig.size; tx.descriptorTable = NetRig.txDesc; tx.availableRing = NetRig.txAvail; tx.usedRing = NetRig.txUsed
        rx.ready = true; tx.ready = true
        let log = self.log
        device.activate(queues: [rx, tx], context: VirtioContext(
            memory: memory, features: features ?? device.features,
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
        #expect(rig.readingBackend)
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
        #expect(!rig.readingBackend, "no rx buffers: the fd is not watched (the frames wait in the backend)")
        let a = try rig.offer(0, [rig.space(1526)])
        rig.device.process(queue: 0)
        #expect(rig.readingBackend)
        rig.events.fire()
        #expect(try rig.used(0).index == 1, "one buffer, one frame; the second waits")
        #expect(!rig.readingBackend)
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
        #expect(rig.failures.count == 1 && !rig.readingBackend, "\(rig.failures)")
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
        #expect(!rig.readingBackend, "a failed device stops reading its backend")
        rig.device.process(queue: 0)
        rig.device.process(queue: 1)
        #expect(rig.failures.count == 1, "and does nothing more until reset")
        rig.device.reset()
        rig.activate()
        #expect(rig.readingBackend, "a reset and a new activation bring it back")
    }
}

/// Offloads: what is offered, what the TAP is told, and the header on both paths.
@Suite struct VirtioNetOffloadTests {
    static let guestOffloads = NetFeature.guestChecksum | NetFeature.guestTSO4 | NetFeature.guestTSO6 | NetFeature.guestECN
    static let hostOffloads = NetFeature.checksum | NetFeature.hostTSO4 | NetFeature.hostTSO6 | NetFeature.hostECN
    /// What Linux 6.12's virtio_net accepts of Kiln's offer.
    static let linux = VirtioNet.baseFeatures | guestOffloads | hostOffloads | NetFeature.mergeableRXBuffers

    /// A TCP segment of 2500 bytes (headers included) as the host kernel hands one over with TSO.
    static let tsoHeader = NetHeader(flags: NetHeader.needsChecksum, gsoType: NetHeader.gsoTCPv4, headerLength: 66,
                                     gsoSize: 1448, checksumStart: 34, checksumOffset: 16)

    @Test func offloadsAreOfferedOnlyWithABackendThatTakesThem() throws {
        let plain = try NetRig()
        #expect(plain.device.features & NetFeature.offloads == 0, "a socket backend: no offloads")
        #expect(plain.device.features == VirtioNet.baseFeatures)
        let tap = try NetRig(offloads: true)
        #expect(tap.device.features == VirtioNet.baseFeatures | NetFeature.offloads)
        for bit in [0, 1, 7, 8, 9, 11, 12, 13, 15] { #expect(tap.device.features & (1 << UInt64(bit)) != 0, "bit \(bit)") }
        #expect(tap.device.features & ((1 << 10) | (1 << 14) | (1 << 17) | (1 << 22)) == 0, "no UFO, control queue or MQ")
        #expect(tap.offloadsSet == [[.checksum, .tso4, .tso6, .tsoECN], []], "probed at creation, then left off")
    }

    @Test func theTAPsOffloadsFollowWhatTheDriverNegotiated() {
        #expect(VirtioNet.tapOffloads(for: VirtioOffloadTestsFeatures.all) == [.checksum, .tso4, .tso6, .tsoECN])
        #expect(VirtioNet.tapOffloads(for: NetFeature.guestChecksum | NetFeature.guestTSO4) == [.checksum, .tso4])
        #expect(VirtioNet.tapOffloads(for: NetFeature.guestChecksum | NetFeature.guestECN) == [.checksum], "ECN only with TSO")
        #expect(VirtioNet.tapOffloads(for: NetFeature.guestTSO4 | NetFeature.guestTSO6) == [], "TSO needs GUEST_CSUM")
        #expect(VirtioNet.tapOffloads(for: VirtioOffloadTestsFeatures.hostOnly) == [], "the host side needs no TAP setting")
    }

    @Test func offloadsAreSetOnTheDeviceThreadAtActivationAndClearedAtReset() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux)
        #expect(rig.offloadsSet.count == 2, "not on the activating (vCPU) thread")
        rig.events.fire() // the device thread: the offload signal (and the backend, which has nothing)
        #expect(rig.offloadsSet.last == [.checksum, .tso4, .tso6, .tsoECN])
        rig.device.reset()
        rig.events.fire()
        #expect(rig.offloadsSet.last == [], "reset: back to whole frames")
        rig.activate(features: VirtioNet.baseFeatures | NetFeature.checksum | NetFeature.hostTSO4)
        rig.events.fire()
        #expect(rig.offloadsSet.count == 4, "a driver without GUEST_CSUM leaves the TAP as it is (off)")
        rig.device.reset()
        rig.activate(features: Self.linux) // a restore activates the same way
        rig.events.fire()
        #expect(rig.offloadsSet.last == [.checksum, .tso4, .tso6, .tsoECN] && rig.offloadsSet.count == 5)
        #expect(rig.device.offloadFailures.load(ordering: .relaxed) == 0)
    }

    @Test func transmitPassesAChecksumAndSegmentationHeaderThrough() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux)
        var header = Self.tsoHeader
        header.bufferCount = 7 // meaningless on transmit: zeroed for the TAP
        let frame = (0..<2500).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try rig.offer(1, [try rig.stage(header.bytes), try rig.stage(Array(frame[0..<2000])), try rig.stage(Array(frame[2000...]))])
        rig.device.process(queue: 1)
        var expected = Self.tsoHeader
        expected.bufferCount = 0
        #expect(rig.hostReceive() == expected.bytes + frame)
        #expect(rig.failures.isEmpty && rig.device.txFrames.load(ordering: .relaxed) == 1)
    }

    /// Each header no honest driver sends fails the device; the TAP never sees the frame.
    @Test(arguments: [
        ("data-valid flag", NetHeader(flags: NetHeader.dataValid), linux),
        ("unknown flag", NetHeader(flags: 0x41), linux),
        ("UDP fragmentation", NetHeader(flags: 1, gsoType: 3, gsoSize: 1400, checksumStart: 34, checksumOffset: 6), linux),
        ("UDP segmentation", NetHeader(flags: 1, gsoType: 5, gsoSize: 1400, checksumStart: 34, checksumOffset: 6), linux),
        ("TSO4 not negotiated", tsoHeader, linux & ~NetFeature.hostTSO4),
        ("checksum not negotiated", NetHeader(flags: 1, checksumStart: 34, checksumOffset: 16), linux & ~NetFeature.checksum),
        ("ECN not negotiated", NetHeader(flags: 1, gsoType: 0x81, headerLength: 66, gsoSize: 1448, checksumStart: 34, checksumOffset: 16),
         linux & ~NetFeature.hostECN),
        ("TSO without NEEDS_CSUM", NetHeader(gsoType: 4, headerLength: 66, gsoSize: 1448), linux),
        ("gso_size 0", NetHeader(flags: 1, gsoType: 1, headerLength: 66, checksumStart: 34, checksumOffset: 16), linux),
        ("hdr_len past the frame", NetHeader(flags: 1, gsoType: 1, headerLength: 2501, gsoSize: 1448, checksumStart: 34, checksumOffset: 16), linux),
        ("checksum past the frame", NetHeader(flags: 1, checksumStart: 2490, checksumOffset: 9), linux),
        ("checksum offset at 64 KiB", NetHeader(flags: 1, checksumStart: 0xFFFF, checksumOffset: 0xFFFF), linux),
    ])
    func malformedTransmitHeadersFailTheDevice(_ name: String, _ header: NetHeader, _ features: UInt64) throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: features)
        try rig.offer(1, [try rig.stage(header.bytes + [UInt8](repeating: 0x55, count: 2500))])
        rig.device.process(queue: 1)
        #expect(rig.failures.count == 1, "\(name): \(rig.failures)")
        #expect(rig.hostReceive() == nil, "nothing reached the backend")
        #expect(!rig.readingBackend)
    }

    @Test func mergeableBuffersTakeALargeFrameAcrossSeveralChains() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux)
        let chains = [rig.space(1000), rig.space(1000), rig.space(1000), rig.space(1000)]
        let heads = try chains.map { try rig.offer(0, [$0]) }
        let frame = (0..<2500).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        rig.hostSend(Self.tsoHeader.bytes + frame)
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.index == 3)
        #expect(used.elements.map(\.id) == heads[0..<3].map(UInt32.init))
        #expect(used.elements.map(\.length) == [1000, 1000, 512])
        var expected = Self.tsoHeader
        expected.bufferCount = 3
        let placed = try rig.memory.read(1000, at: chains[0].address) + rig.memory.read(1000, at: chains[1].address)
            + rig.memory.read(512, at: chains[2].address)
        #expect(placed == expected.bytes + frame, "header passed through with num_buffers 3, then the frame")
        #expect(rig.interrupts == 1, "one interrupt for the frame")
        rig.hostSend(NetHeader().bytes + [9, 9, 9])
        rig.events.fire()
        #expect(try rig.used(0).index == 4 && rig.memory.read(12, at: chains[3].address) == NetHeader(bufferCount: 1).bytes)
    }

    @Test func aFrameWaitsForMoreBuffersAndASnapshotGivesTheHeldOnesBack() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux)
        let first = rig.space(1000)
        let a = try rig.offer(0, [first])
        let frame = [UInt8](repeating: 0xAB, count: 1500)
        rig.hostSend(NetHeader().bytes + frame)
        rig.events.fire()
        #expect(try rig.used(0).index == 0, "one buffer is not enough: the frame waits")
        #expect(!rig.readingBackend)
        let saved = try #require(rig.device.liveQueues())
        #expect(saved[0].lastAvailable == 0, "the held chain is saved as not yet popped")
        let second = rig.space(1000)
        let b = try rig.offer(0, [second])
        rig.device.process(queue: 0) // the guest's kick for the new buffer
        let used = try rig.used(0)
        #expect(used.elements.map(\.id) == [UInt32(a), UInt32(b)] && used.elements.map(\.length) == [1000, 512])
        #expect(try rig.memory.read(12, at: first.address) == NetHeader(bufferCount: 2).bytes)
        #expect(rig.device.liveQueues()?[0].lastAvailable == 2 && !rig.readingBackend, "no buffers left: not reading")
    }

    @Test func aFrameLargerThanTheWholeRingIsDroppedAndTheBuffersKept() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux)
        for _ in 0..<NetRig.size { try rig.offer(0, [rig.space(16)]) }
        rig.hostSend(NetHeader().bytes + [UInt8](repeating: 1, count: 500))
        rig.hostSend(NetHeader().bytes + [2, 2])
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.index == 1 && used.elements.first?.length == 14)
        #expect(rig.device.rxDropped.load(ordering: .relaxed) == 1 && rig.failures.isEmpty)
    }

    @Test func withoutMergeableBuffersOneChainTakesA64KiBSegment() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: Self.linux & ~NetFeature.mergeableRXBuffers)
        let head = try rig.offer(0, [rig.space(12), rig.space(0x1000), rig.space(0x1000)])
        let frame = [UInt8](repeating: 3, count: 5000)
        rig.hostSend(Self.tsoHeader.bytes + frame)
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.elements.map(\.id) == [UInt32(head)] && used.elements.first?.length == 5012)
        var expected = Self.tsoHeader
        expected.bufferCount = 1
        #expect(try rig.memory.read(12, at: NetRig.data) == expected.bytes)
    }

    /// Frames the TAP should not hand over for what the driver negotiated are dropped, never delivered.
    @Test func receivedFramesNeedingUnnegotiatedOffloadsAreDropped() throws {
        let rig = try NetRig(offloads: true)
        rig.activate(features: VirtioNet.baseFeatures | NetFeature.mergeableRXBuffers) // no guest offloads
        let buffer = rig.space(2000)
        try rig.offer(0, [buffer])
        rig.hostSend(Self.tsoHeader.bytes + [UInt8](repeating: 1, count: 100)) // TSO
        rig.hostSend(NetHeader(flags: NetHeader.needsChecksum, checksumStart: 34, checksumOffset: 16).bytes + [1, 1]) // partial checksum
        rig.hostSend(NetHeader(flags: NetHeader.dataValid).bytes + [4, 4]) // DATA_VALID: delivered, flag cleared
        rig.events.fire()
        #expect(rig.device.rxDropped.load(ordering: .relaxed) == 2)
        #expect(try rig.used(0).elements.first?.length == 14)
        #expect(try rig.memory.read(14, at: buffer.address) == NetHeader(bufferCount: 1).bytes + [4, 4])
    }

    @Test func headerBytesRoundTrip() {
        let h = NetHeader(flags: 1, gsoType: 0x84, headerLength: 0x1234, gsoSize: 1448, checksumStart: 54, checksumOffset: 16, bufferCount: 0xBEEF)
        #expect(h.bytes == [1, 0x84, 0x34, 0x12, 0xA8, 0x05, 54, 0, 16, 0, 0xEF, 0xBE])
        #expect(h.bytes.withUnsafeBytes { NetHeader($0) } == h)
        #expect(h.checkTransmit(frameLength: 0x1234, features: Self.linux) == nil)
        #expect(h.checkTransmit(frameLength: 0x1233, features: Self.linux) == .headerLength(0x1234, frame: 0x1233))
        #expect(NetHeader(flags: 1, checksumStart: 10, checksumOffset: 6).checkTransmit(frameLength: 18, features: Self.linux) == nil)
        #expect(NetHeader(flags: 1, checksumStart: 10, checksumOffset: 6).checkTransmit(frameLength: 17, features: Self.linux) != nil)
    }
}

enum VirtioOffloadTestsFeatures {
    static let all = VirtioNetOffloadTests.linux
    static let hostOnly = NetFeature.checksum | NetFeature.hostTSO4 | NetFeature.hostTSO6 | NetFeature.hostECN
}
