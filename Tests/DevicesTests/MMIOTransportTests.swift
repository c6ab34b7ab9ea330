import GuestMemory
import Synchronization
import Testing
@testable import Devices

/// A device that records what the transport does to it.
final class RecordingDevice: VirtioDevice {
    let deviceID: UInt32 = 42
    let queueCount = 1
    let features: UInt64 = VirtioFeature.version1 | 1 << 3
    let activations = Mutex<[[Virtqueue]]>([])
    let processed = Atomic<Int>(0)
    let resets = Atomic<Int>(0)

    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) { serveConfig([1, 2, 3, 4], offset: offset, into: data) }
    func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}
    func activate(queues: [Virtqueue], context: VirtioContext) { activations.withLock { $0.append(queues) } }
    func process(queue index: Int) { processed.add(1, ordering: .relaxed) }
    func reset() { resets.add(1, ordering: .relaxed) }
}

@Suite struct MMIOTransportTests {
    let memory: GuestMemory
    let device = RecordingDevice()
    let transport: VirtioMMIOTransport

    init() throws {
        memory = try GuestMemory(layout: [(0, 1 << 20)])
        transport = VirtioMMIOTransport(device: device, memory: memory, events: NoEventLoop(), interrupt: {})
    }

    func r(_ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { transport.read(offset: offset, into: $0) }
        return v
    }

    func w(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value) { transport.write(offset: offset, from: $0) }
    }

    /// The Linux driver's sequence up to FEATURES_OK and queue 0 set up.
    func negotiate(features: UInt64 = VirtioFeature.version1) {
        w(0x070, 1); w(0x070, 3)
        w(0x024, 0); w(0x020, UInt32(truncatingIfNeeded: features))
        w(0x024, 1); w(0x020, UInt32(truncatingIfNeeded: features >> 32))
        w(0x070, 0xB)
        w(0x030, 0)
        w(0x038, 16)
        w(0x080, 0x1000); w(0x084, 0)
        w(0x090, 0x2000); w(0x094, 0)
        w(0x0A0, 0x3000); w(0x0A4, 0)
        w(0x044, 1)
    }

    @Test func identifiesItself() {
        #expect(r(0x000) == 0x7472_6976)
        #expect(r(0x004) == 2)
        #expect(r(0x008) == 42)
        #expect(r(0x034) == UInt32(Virtqueue.maxSize))
        w(0x014, 1)
        #expect(r(0x010) == 1, "high word of the features: VERSION_1")
        #expect(r(0x100) == 0x0403_0201, "config space")
    }

    @Test func driverOKActivatesWithTheQueueTheDriverDescribed() throws {
        negotiate()
        #expect(r(0x070) == 0xB, "FEATURES_OK accepted")
        #expect(r(0x044) == 1)
        w(0x070, 0xF)
        #expect(transport.isActive)
        let queues = try #require(device.activations.withLock { $0.first })
        #expect(queues[0].size == 16 && queues[0].descriptorTable == 0x1000 && queues[0].usedRing == 0x3000)
        w(0x050, 0)
        #expect(device.processed.load(ordering: .relaxed) == 1)
        w(0x070, 0)
        #expect(device.resets.load(ordering: .relaxed) == 1)
        #expect(!transport.isActive && r(0x070) == 0 && r(0x044) == 0)
    }

    @Test func featuresNotOfferedOrWithoutVersion1AreRefused() {
        negotiate(features: VirtioFeature.version1 | 1 << 7)
        #expect(r(0x070) & VirtioStatus.featuresOK == 0)
        w(0x070, 0)
        negotiate(features: 1 << 3)
        #expect(r(0x070) & VirtioStatus.featuresOK == 0, "legacy drivers are not served")
    }

    @Test func queuesOutsideMemoryOrBadSizesNeverBecomeReady() {
        w(0x070, 3)
        w(0x024, 1); w(0x020, 1)
        w(0x070, 0xB)
        w(0x038, 3) // not a power of two: ignored, stays at the maximum
        w(0x080, 0xFFFF_F000); w(0x084, 0x10)
        w(0x044, 1)
        #expect(r(0x044) == 0)
        w(0x070, 0xF)
        #expect(!transport.isActive)
        #expect(r(0x070) & VirtioStatus.needsReset != 0)
    }

    @Test func interruptStatusIsAcknowledged() {
        transport.signal(1)
        #expect(r(0x060) == 1)
        w(0x064, 1)
        #expect(r(0x060) == 0)
    }
}
