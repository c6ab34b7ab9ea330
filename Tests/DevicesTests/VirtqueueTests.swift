import GuestMemory
import Testing
@testable import Devices

@Suite struct VirtqueueTests {
    @Test func popsChainsInOrderAndPushesUsedElements() throws {
        var d = try GuestDriver()
        var q = d.queue()
        try d.post([(0x10000, 16, false), (0x11000, 512, true)])
        try d.post([(0x12000, 8, false)])
        let first = try #require(try q.pop(d.memory))
        #expect(first.head == 0)
        #expect(first.buffers == [Buffer(address: 0x10000, length: 16, writable: false), Buffer(address: 0x11000, length: 512, writable: true)])
        let second = try #require(try q.pop(d.memory))
        #expect(second.head == 2 && second.buffers.count == 1)
        #expect(try q.pop(d.memory) == nil)
        try q.push(head: first.head, written: 513, d.memory)
        #expect(try d.usedIndex() == 1)
        #expect(try d.usedElement(0) == (0, 513))
    }

    @Test func indexJumpBeyondQueueSizeIsRefused() throws {
        let d = try GuestDriver()
        var q = d.queue()
        try d.memory.write(UInt16(100), at: d.avail + 2)
        #expect(throws: VirtqueueError.indexJump(available: 100, lastSeen: 0, size: 16)) { _ = try q.pop(d.memory) }
    }

    @Test func descriptorLoopIsDetected() throws {
        var d = try GuestDriver()
        var q = d.queue()
        try d.descriptor(0, address: 0x10000, length: 8, flags: 1, next: 1)
        try d.descriptor(1, address: 0x10000, length: 8, flags: 1, next: 0)
        try d.publish(0)
        #expect(throws: VirtqueueError.chainTooLong(limit: 16)) { _ = try q.pop(d.memory) }
    }

    @Test func outOfRangeHeadNextAndBuffersAreRefused() throws {
        var d = try GuestDriver()
        var q = d.queue()
        try d.publish(40)
        #expect(throws: VirtqueueError.headOutOfRange(40)) { _ = try q.pop(d.memory) }

        d = try GuestDriver()
        q = d.queue()
        try d.descriptor(0, address: 0x10000, length: 8, flags: 1, next: 99)
        try d.publish(0)
        #expect(throws: VirtqueueError.nextOutOfRange(99)) { _ = try q.pop(d.memory) }

        d = try GuestDriver()
        q = d.queue()
        try d.post([(0xFFFF0, 0x100, true)]) // runs past the end of the 1 MiB memory
        #expect(throws: VirtqueueError.bufferOutsideMemory(address: 0xFFFF0, length: 0x100)) { _ = try q.pop(d.memory) }

        d = try GuestDriver()
        q = d.queue()
        try d.post([(UInt64.max - 4, 16, false)])
        #expect(throws: VirtqueueError.self) { _ = try q.pop(d.memory) }
    }

    @Test func indirectTablesAreFollowedOnceAndChecked() throws {
        var d = try GuestDriver()
        var q = d.queue()
        // An indirect table of two descriptors at 0x8000.
        for (i, (address, length, flags, next)) in [(UInt64(0x10000), UInt32(16), UInt16(1), UInt16(1)), (0x11000, 1, 2, 0)].enumerated() {
            let e = 0x8000 + UInt64(i) * 16
            try d.memory.write(address, at: e); try d.memory.write(length, at: e + 8)
            try d.memory.write(flags, at: e + 12); try d.memory.write(next, at: e + 14)
        }
        try d.descriptor(0, address: 0x8000, length: 32, flags: 4, next: 0)
        try d.publish(0)
        let chain = try #require(try q.pop(d.memory))
        #expect(chain.buffers.map(\.address) == [0x10000, 0x11000])

        // Nested indirect and a table whose length is not a multiple of 16 are refused.
        try d.memory.write(UInt16(4), at: 0x8000 + 12)
        try d.descriptor(1, address: 0x8000, length: 32, flags: 4, next: 0)
        try d.publish(1)
        #expect(throws: VirtqueueError.nestedIndirect) { _ = try q.pop(d.memory) }
        var fresh = try GuestDriver()
        var fq = fresh.queue()
        try fresh.descriptor(0, address: 0x8000, length: 24, flags: 4, next: 0)
        try fresh.publish(0)
        #expect(throws: VirtqueueError.badIndirectTable(length: 24)) { _ = try fq.pop(fresh.memory) }
    }

    @Test func interruptSuppressionFollowsFlagsAndEventIndex() throws {
        var d = try GuestDriver()
        var q = d.queue()
        try d.post([(0x10000, 8, true)])
        let c = try #require(try q.pop(d.memory))
        try q.push(head: c.head, written: 0, d.memory)
        #expect(try q.needsInterrupt(d.memory))
        try d.memory.write(UInt16(1), at: d.avail) // VRING_AVAIL_F_NO_INTERRUPT
        #expect(try !q.needsInterrupt(d.memory))

        var e = try GuestDriver()
        var eq = e.queue(eventIndex: true)
        try e.memory.write(UInt16(1), at: e.avail + 4 + 2 * 16) // used_event = 1: interrupt when used idx passes 1
        for _ in 0..<2 { try e.post([(0x10000, 8, true)]) }
        let a = try #require(try eq.pop(e.memory))
        try eq.push(head: a.head, written: 0, e.memory)
        #expect(try !eq.needsInterrupt(e.memory), "used idx 1 has not passed used_event 1")
        let b = try #require(try eq.pop(e.memory))
        try eq.push(head: b.head, written: 0, e.memory)
        #expect(try eq.needsInterrupt(e.memory))
        #expect(try e.memory.read(UInt16.self, at: e.used + 4 + 8 * 16) == 2, "avail_event tells the driver how far we read")
    }

    @Test func randomRingsNeverCrash() throws {
        var rng = SystemRandomNumberGenerator()
        let d = try GuestDriver(memorySize: 64 << 10)
        for _ in 0..<3000 {
            var q = d.queue(eventIndex: Bool.random(using: &rng))
            for a in stride(from: UInt64(0x1000), to: 0x3200, by: 8) {
                try d.memory.write(UInt64.random(in: 0...UInt64.max, using: &rng) & 0x0001_FFFF_0001_FFFF, at: a)
            }
            for _ in 0..<4 {
                if let chain = try? q.pop(d.memory) { try? q.push(head: chain.head, written: 1, d.memory) } else { break }
            }
        }
    }
}
