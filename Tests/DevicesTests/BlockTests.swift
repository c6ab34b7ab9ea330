import Glibc
import GuestMemory
import LinuxSys
import Synchronization
import Testing
@testable import Devices

/// A temporary raw image of `sectors` sectors filled with a pattern.
func makeImage(sectors: Int, name: String) -> String {
    let path = "/tmp/kiln-blk-\(getpid())-\(name)"
    var bytes = [UInt8](repeating: 0, count: sectors * 512)
    for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i / 512) }
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
    _ = write(fd, bytes, bytes.count)
    close(fd)
    return path
}

@Suite struct BlockTests {
    let hdr: UInt64 = 0x10000, data: UInt64 = 0x20000, status: UInt64 = 0x30000

    func setUp(_ path: String, readOnly: Bool = false, overlay: Bool = false) throws -> (VirtioBlock, GuestDriver, DeviceLog) {
        let block = try VirtioBlock(path: path, readOnly: readOnly, overlay: overlay, serial: "serial-42")
        let driver = try GuestDriver()
        let signals = DeviceLog()
        block.activate(queues: [driver.queue()], context: VirtioContext(
            memory: driver.memory, features: block.features,
            interrupt: { signals.interrupts.add(1, ordering: .relaxed) },
            fail: { reason in signals.failures.withLock { $0.append(reason) } }, events: NoEventLoop()))
        return (block, driver, signals)
    }

    func header(_ d: GuestDriver, type: UInt32, sector: UInt64) throws {
        try d.memory.write(type, at: hdr)
        try d.memory.write(UInt32(0), at: hdr + 4)
        try d.memory.write(sector, at: hdr + 8)
        try d.memory.write(UInt8(0xFF), at: status)
    }

    @Test func configReportsCapacityInSectors() throws {
        let path = makeImage(sectors: 100, name: "cap")
        defer { unlink(path) }
        let block = try VirtioBlock(path: path, readOnly: false, serial: "s")
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { block.readConfig(offset: 0, into: $0) }
        #expect(capacity == 100)
        #expect(block.features & VirtioFeature.version1 != 0)
        #expect(block.features & VirtioBlock.featureFlush != 0)
        #expect(block.features & VirtioBlock.featureReadOnly == 0)
    }

    @Test func readReturnsImageBytesAndStatusOK() throws {
        let path = makeImage(sectors: 16, name: "read")
        defer { unlink(path) }
        var (block, d, signals) = try setUp(path)
        try header(d, type: VirtioBlock.requestIn, sector: 3)
        try d.post([(hdr, 16, false), (data, 1024, true), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(1024, at: data) == [UInt8](repeating: 3, count: 512) + [UInt8](repeating: 4, count: 512))
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusOK)
        #expect(try d.usedElement(0) == (0, 1025))
        #expect(signals.interrupts.load(ordering: .relaxed) == 1)
    }

    @Test func anOverlayKeepsWritesPrivateAndTheImageUntouched() throws {
        let path = makeImage(sectors: 16, name: "overlay")
        defer { unlink(path) }
        var (block, d, _) = try setUp(path, overlay: true)
        #expect(block.features & VirtioBlock.featureReadOnly == 0, "the guest sees a writable disk")
        // Write sectors 5 and 6, then read 4...7: 4 and 7 from the image, 5 and 6 from the layer.
        try d.memory.write([UInt8](repeating: 0xAB, count: 1024), at: data)
        try header(d, type: VirtioBlock.requestOut, sector: 5)
        try d.post([(hdr, 16, false), (data, 1024, false), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusOK)
        try header(d, type: VirtioBlock.requestIn, sector: 4)
        try d.post([(hdr, 16, false), (data, 2048, true), (status, 1, true)])
        block.process(queue: 0)
        let expected = [UInt8](repeating: 4, count: 512) + [UInt8](repeating: 0xAB, count: 1024) + [UInt8](repeating: 7, count: 512)
        #expect(try d.memory.read(2048, at: data) == expected)
        #expect(block.layer?.writtenSectors == 2)
        // The image file still holds its pattern.
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var back = [UInt8](repeating: 0, count: 512)
        _ = pread(fd, &back, 512, 5 * 512)
        #expect(back == [UInt8](repeating: 5, count: 512))
        // A second overlay on the same image starts from the image, not from the first one's writes.
        var (other, d2, _) = try setUp(path, overlay: true)
        try header(d2, type: VirtioBlock.requestIn, sector: 5)
        try d2.post([(hdr, 16, false), (data, 512, true), (status, 1, true)])
        other.process(queue: 0)
        #expect(try d2.memory.read(512, at: data) == [UInt8](repeating: 5, count: 512))
    }

    @Test func writeThenFlushReachesTheFile() throws {
        let path = makeImage(sectors: 16, name: "write")
        defer { unlink(path) }
        var (block, d, _) = try setUp(path)
        try d.memory.write([UInt8](repeating: 0xAB, count: 512), at: data)
        try header(d, type: VirtioBlock.requestOut, sector: 5)
        try d.post([(hdr, 16, false), (data, 512, false), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusOK)
        try header(d, type: VirtioBlock.requestFlush, sector: 0)
        try d.post([(hdr, 16, false), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusOK)
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var back = [UInt8](repeating: 0, count: 512)
        #expect(pread(fd, &back, 512, 5 * 512) == 512)
        #expect(back == [UInt8](repeating: 0xAB, count: 512))
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        let path = makeImage(sectors: 16, name: "ro")
        defer { unlink(path) }
        var (block, d, _) = try setUp(path, readOnly: true)
        #expect(block.features & VirtioBlock.featureReadOnly != 0)
        try header(d, type: VirtioBlock.requestOut, sector: 0)
        try d.post([(hdr, 16, false), (data, 512, false), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusIOError)
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var back = [UInt8](repeating: 9, count: 1)
        _ = pread(fd, &back, 1, 0)
        #expect(back == [0], "the image is untouched")
    }

    @Test func outOfRangeAndMisalignedRequestsAreIOErrors() throws {
        let path = makeImage(sectors: 16, name: "range")
        defer { unlink(path) }
        var (block, d, signals) = try setUp(path)
        try header(d, type: VirtioBlock.requestIn, sector: 15)
        try d.post([(hdr, 16, false), (data, 1024, true), (status, 1, true)]) // runs past sector 16
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusIOError)
        try header(d, type: VirtioBlock.requestIn, sector: UInt64.max)
        try d.post([(hdr, 16, false), (data, 512, true), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusIOError)
        try header(d, type: VirtioBlock.requestIn, sector: 0)
        try d.post([(hdr, 16, false), (data, 100, true), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusIOError)
        try header(d, type: 77, sector: 0)
        try d.post([(hdr, 16, false), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(UInt8.self, at: status) == VirtioBlock.statusUnsupported)
        #expect(try d.usedIndex() == 4, "every request completes")
        #expect(signals.failures.withLock { $0.isEmpty })
    }

    @Test func getIDReturnsTheSerial() throws {
        let path = makeImage(sectors: 1, name: "id")
        defer { unlink(path) }
        var (block, d, _) = try setUp(path)
        try header(d, type: VirtioBlock.requestGetID, sector: 0)
        try d.post([(hdr, 16, false), (data, 20, true), (status, 1, true)])
        block.process(queue: 0)
        #expect(try d.memory.read(9, at: data) == Array("serial-42".utf8))
    }

    @Test func brokenRingFailsTheDeviceInsteadOfCrashing() throws {
        let path = makeImage(sectors: 1, name: "broken")
        defer { unlink(path) }
        var (block, d, signals) = try setUp(path)
        try d.descriptor(0, address: hdr, length: 16, flags: 1, next: 0) // a chain that loops on itself
        try d.publish(0)
        block.process(queue: 0)
        #expect(signals.failures.withLock { $0.count } == 1)
        block.process(queue: 0)
        #expect(signals.failures.withLock { $0.count } == 1, "a failed queue stays stopped")
    }
}
