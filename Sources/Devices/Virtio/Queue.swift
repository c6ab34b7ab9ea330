import GuestMemory
import Synchronization

/// Why a virtqueue stopped: the guest broke the split-ring rules (virtio 1.x, 2.7).
/// The device that owns the queue marks itself DEVICE_NEEDS_RESET; Kiln never trusts the ring again.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible, Sendable {
    case notReady
    case indexJump(available: UInt16, lastSeen: UInt16, size: UInt16)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong(limit: Int)
    case badIndirectTable(length: UInt32)
    case nestedIndirect
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case .notReady: return "queue used before it was set up"
        case .indexJump(let a, let l, let s): return "available index jumped from \(l) to \(a) on a queue of \(s)"
        case .headOutOfRange(let h): return "descriptor head \(h) is outside the table"
        case .nextOutOfRange(let n): return "descriptor next \(n) is outside the table"
        case .chainTooLong(let limit): return "descriptor chain longer than \(limit) (a loop?)"
        case .badIndirectTable(let len): return "indirect table of \(len) bytes"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .bufferOutsideMemory(let a, let l): return "buffer 0x\(String(a, radix: 16))+\(l) is outside guest memory"
        case .memory(let e): return "ring access failed: \(e)"
        }
    }
}

/// One guest buffer of a request: device-readable, or device-writable.
public struct Buffer: Equatable, Sendable {
    public let address: UInt64
    public let length: UInt32
    public let writable: Bool
}

/// A request popped from the available ring: its head (to return on the used ring) and buffers.
public struct DescriptorChain: Equatable, Sendable {
    public let head: UInt16
    public let buffers: [Buffer]

    public var readable: [Buffer] { buffers.filter { !$0.writable } }
    public var writable: [Buffer] { buffers.filter { $0.writable } }
}

/// A split virtqueue as the device sees it. Every guest-supplied index, address and length is
/// checked before use; a violation is a `VirtqueueError`, never an access outside guest memory.
public struct Virtqueue: Sendable, Equatable {
    public static let maxSize: UInt16 = 256
    static let descriptorSize: UInt64 = 16
    static let flagNext: UInt16 = 1, flagWrite: UInt16 = 2, flagIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1

    // Set by the driver through the transport.
    public var size: UInt16 = Virtqueue.maxSize
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var availableRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    /// VIRTIO_F_EVENT_IDX negotiated.
    public var eventIndex = false

    // Device-private progress.
    public private(set) var lastAvailable: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    /// nextUsed when the driver was last interrupted (event-index suppression).
    public internal(set) var signalledUsed: UInt16 = 0

    public init() {}

    /// A queue as a snapshot recorded it, device-private progress included.
    public init(size: UInt16, ready: Bool, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
                eventIndex: Bool, lastAvailable: UInt16, nextUsed: UInt16, signalledUsed: UInt16) {
        self.size = size; self.ready = ready; self.descriptorTable = descriptorTable
        self.availableRing = availableRing; self.usedRing = usedRing; self.eventIndex = eventIndex
        self.lastAvailable = lastAvailable; self.nextUsed = nextUsed; self.signalledUsed = signalledUsed
    }

    /// The queue as if the last `count` chains popped had not been: a device that holds popped
    /// chains unused saves this, so that a restored device pops them again instead of losing them.
    public func rewound(by count: Int) -> Virtqueue {
        var q = self
        q.lastAvailable &-= UInt16(truncatingIfNeeded: count)
        return q
    }

    /// Back to the state after reset (sizes and addresses cleared).
    public mutating func reset() { self = Virtqueue() }

    /// A driver-chosen size is valid when it is a non-zero power of two up to `maxSize`.
    public static func isValidSize(_ n: UInt32) -> Bool { n > 0 && n <= UInt32(maxSize) && n & (n - 1) == 0 }

    /// Checks that the three rings lie inside guest memory (called when the driver sets QueueReady).
    public func validate(_ memory: GuestMemory) -> Bool {
        let n = UInt64(size)
        return Virtqueue.isValidSize(UInt32(size))
            && memory.contains(descriptorTable, count: Int(n * Virtqueue.descriptorSize))
            && memory.contains(availableRing, count: Int(6 + 2 * n))
            && memory.contains(usedRing, count: Int(6 + 8 * n))
            && descriptorTable & 15 == 0 && availableRing & 1 == 0 && usedRing & 3 == 0
    }

    /// Pops the next available request, or nil when the ring is empty.
    public mutating func pop(_ memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain? {
        guard ready else { throw .notReady }
        let available = try read(UInt16.self, memory, availableRing + 2)
        let pending = available &- lastAvailable
        if pending == 0 {
            if eventIndex { try write(lastAvailable, memory, usedRing + 4 + 8 * UInt64(size)) } // avail_event
            return nil
        }
        guard pending <= size else { throw .indexJump(available: available, lastSeen: lastAvailable, size: size) }
        atomicMemoryFence(ordering: .acquiring) // ring entries are read after the index that published them
        let head = try read(UInt16.self, memory, availableRing + 4 + 2 * UInt64(lastAvailable % size))
        guard head < size else { throw .headOutOfRange(head) }
        let chain = try walk(head: head, memory)
        lastAvailable &+= 1
        if eventIndex { try write(lastAvailable, memory, usedRing + 4 + 8 * UInt64(size)) }
        return chain
    }

    /// Follows a chain from `head`, expanding an indirect table if the head names one.
    func walk(head: UInt16, _ memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain {
        var buffers: [Buffer] = []
        var index = head
        var table = descriptorTable
        var tableSize = size
        var indirect = false
        var steps = 0
        while true {
            steps += 1
            guard steps <= Int(tableSize) else { throw .chainTooLong(limit: Int(tableSize)) }
            let d = table + UInt64(index) * Virtqueue.descriptorSize
            let address = try read(UInt64.self, memory, d)
            let length = try read(UInt32.self, memory, d + 8)
            let flags = try read(UInt16.self, memory, d + 12)
            let next = try read(UInt16.self, memory, d + 14)
            if flags & Virtqueue.flagIndirect != 0 {
                guard !indirect else { throw .nestedIndirect }
                guard buffers.isEmpty, length > 0, length % 16 == 0, length / 16 <= UInt32(UInt16.max) else {
                    throw .badIndirectTable(length: length)
                }
                guard memory.contains(address, count: Int(length)) else { throw .bufferOutsideMemory(address: address, length: length) }
                indirect = true
                table = address
                tableSize = UInt16(length / 16)
                index = 0
                steps = 0
                continue
            }
            guard memory.contains(address, count: Int(length)) else { throw .bufferOutsideMemory(address: address, length: length) }
            buffers.append(Buffer(address: address, length: length, writable: flags & Virtqueue.flagWrite != 0))
            guard flags & Virtqueue.flagNext != 0 else { break }
            guard next < tableSize else { throw .nextOutOfRange(next) }
            index = next
        }
        return DescriptorChain(head: head, buffers: buffers)
    }

    /// With EVENT_IDX, asks the driver to notify on the next buffer it adds even while others are pending.
    public func notifyOnNextAvailable(_ memory: GuestMemory) throws(VirtqueueError) {
        guard eventIndex, ready else { return }
        let available = try read(UInt16.self, memory, availableRing + 2)
        try write(available, memory, usedRing + 4 + 8 * UInt64(size))
    }

    /// Returns a finished request to the driver with the number of bytes written into its buffers.
    public mutating func push(head: UInt16, written: UInt32, _ memory: GuestMemory) throws(VirtqueueError) {
        let slot = usedRing + 4 + 8 * UInt64(nextUsed % size)
        try write(UInt32(head), memory, slot)
        try write(written, memory, slot + 4)
        nextUsed &+= 1
        atomicMemoryFence(ordering: .releasing) // the element is visible before the index that publishes it
        try write(nextUsed, memory, usedRing + 2)
    }

    /// Whether the driver wants an interrupt for what was pushed since the last one.
    public mutating func needsInterrupt(_ memory: GuestMemory) throws(VirtqueueError) -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        defer { signalledUsed = nextUsed }
        if eventIndex {
            let usedEvent = try read(UInt16.self, memory, availableRing + 4 + 2 * UInt64(size))
            // vring_need_event: interrupt if used_event lies in (old, new].
            return nextUsed &- usedEvent &- 1 < nextUsed &- signalledUsed
        }
        return try read(UInt16.self, memory, availableRing) & Virtqueue.availNoInterrupt == 0
    }

    private func read<T: FixedWidthInteger>(_: T.Type, _ memory: GuestMemory, _ address: UInt64) throws(VirtqueueError) -> T {
        do { return try memory.read(T.self, at: address) } catch { throw .memory(error) }
    }

    private func write<T: FixedWidthInteger>(_ value: T, _ memory: GuestMemory, _ address: UInt64) throws(VirtqueueError) {
        do { try memory.write(value, at: address) } catch { throw .memory(error) }
    }
}
