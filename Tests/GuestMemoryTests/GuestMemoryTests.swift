import Testing
@testable import GuestMemory

@Suite struct GuestMemoryTests {
    @Test func integersRoundTripLittleEndian() throws {
        let mem = try GuestMemory(layout: [(0, 0x10000)])
        try mem.write(UInt32(0x1122_3344), at: 0x100)
        #expect(try mem.read(4, at: 0x100) == [0x44, 0x33, 0x22, 0x11])
        #expect(try mem.read(UInt32.self, at: 0x100) == 0x1122_3344)
    }

    @Test func accessesOutsideMemoryAreRefused() throws {
        let mem = try GuestMemory(layout: [(0, 0x1000), (0x10000, 0x1000)])
        #expect(throws: GuestMemoryError.outOfRange(address: 0xFFE, count: 4)) {
            try mem.write(UInt32(1), at: 0xFFE)
        }
        // An address past every region's end is refused (it once trapped on unsigned underflow).
        #expect(!mem.contains(0xFFFF_0000, count: 44))
        #expect(throws: GuestMemoryError.self) { try mem.read(UInt64.self, at: 0xFFFF_FFFF_FFFF_0000) }
        // A range spanning the gap between two regions is refused too.
        #expect(throws: GuestMemoryError.self) { try mem.read(0x10000, at: 0x800) }
        #expect(throws: GuestMemoryError.self) { try mem.read(1, at: 0x11000) }
        #expect(throws: GuestMemoryError.self) { try mem.read(8, at: UInt64.max - 3) }
        #expect(throws: GuestMemoryError.self) { try mem.read(UInt64.self, at: 0x5000) }
        // Addresses past the end of every region are refused, not trapped on (guests supply them).
        #expect(!mem.contains(0xFFFF_0000, count: 64))
        #expect(throws: GuestMemoryError.self) { try mem.read(1, at: 0x20000) }
        try mem.write(UInt8(7), at: 0x10FFF)
        #expect(try mem.read(UInt8.self, at: 0x10FFF) == 7)
    }

    @Test func overlappingRegionsAreRejected() {
        #expect(throws: GuestMemoryError.regionsOverlap) {
            _ = try GuestMemory(layout: [(0, 0x2000), (0x1000, 0x1000)])
        }
    }
}

@Suite struct GuestMemoryBoundsTests {
    @Test func addressesBeyondTheLastRegionAreOutsideNotACrash() throws {
        let mem = try GuestMemory(layout: [(0, 0x1000)])
        #expect(!mem.contains(0x2000, count: 1))
        #expect(!mem.contains(UInt64.max, count: 0))
        #expect(!mem.contains(0x800, count: -1))
        #expect(mem.contains(0x1000, count: 0))
    }
}
