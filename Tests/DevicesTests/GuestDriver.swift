import GuestMemory
@testable import Devices

/// Plays the guest's virtio driver against fake guest memory: lays out a split ring,
/// posts descriptor chains and reads the used ring back.
struct GuestDriver {
    let memory: GuestMemory
    let size: UInt16
    let table: UInt64 = 0x1000
    let avail: UInt64 = 0x2000
    let used: UInt64 = 0x3000
    var nextDescriptor: UInt16 = 0
    var availIndex: UInt16 = 0

    init(memorySize: Int = 1 << 20, size: UInt16 = 16) throws {
        memory = try GuestMemory(layout: [(0, memorySize)])
        self.size = size
    }

    /// A queue as the transport would hand it to the device.
    func queue(eventIndex: Bool = false) -> Virtqueue {
        var q = Virtqueue()
        q.size = size
        q.descriptorTable = table
        q.availableRing = avail
        q.usedRing = used
        q.eventIndex = eventIndex
        q.ready = true
        return q
    }

    mutating func descriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) throws {
        let d = table + UInt64(i) * 16
        try memory.write(address, at: d)
        try memory.write(length, at: d + 8)
        try memory.write(flags, at: d + 12)
        try memory.write(next, at: d + 14)
    }

    /// Posts a chain of (address, length, writable) buffers; returns its head.
    @discardableResult
    mutating func post(_ buffers: [(UInt64, UInt32, Bool)]) throws -> UInt16 {
        let head = nextDescriptor
        for (i, b) in buffers.enumerated() {
            let index = nextDescriptor
            let last = i == buffers.count - 1
            try descriptor(index, address: b.0, length: b.1, flags: (last ? 0 : 1) | (b.2 ? 2 : 0),
                           next: last ? 0 : (index + 1) % size)
            nextDescriptor = (nextDescriptor + 1) % size
        }
        try publish(head)
        return head
    }

    /// Puts `head` on the available ring and bumps the index.
    mutating func publish(_ head: UInt16) throws {
        try memory.write(head, at: avail + 4 + 2 * UInt64(availIndex % size))
        availIndex &+= 1
        try memory.write(availIndex, at: avail + 2)
    }

    func usedIndex() throws -> UInt16 { try memory.read(UInt16.self, at: used + 2) }

    func usedElement(_ i: UInt16) throws -> (id: UInt32, length: UInt32) {
        let e = used + 4 + 8 * UInt64(i % size)
        return (try memory.read(UInt32.self, at: e), try memory.read(UInt32.self, at: e + 4))
    }
}
