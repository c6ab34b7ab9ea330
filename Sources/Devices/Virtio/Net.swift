import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// virtio-net (virtio 1.x, 5.1) with one receive and one transmit queue, backed by a file
/// descriptor that carries one Ethernet frame per read or write behind a 12-byte
/// virtio_net_hdr: a TAP opened with IFF_VNET_HDR (or, in tests, a datagram socket).
///
/// No offloads are offered (no CSUM, GSO, TSO or MRG_RXBUF): frames cross whole and fully
/// checksummed, so the header carries nothing and is zeroed both ways. Simple, and the
/// guest's own kernel time dominates on emulated hosts anyway.
public final class VirtioNet: VirtioDevice {
    static let featureMAC: UInt64 = 1 << 5
    static let featureStatus: UInt64 = 1 << 16
    static let statusLinkUp: UInt16 = 1
    static let rxQueue = 0, txQueue = 1
    /// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
    public static let headerSize = 12
    static let headerFlagNeedsChecksum: UInt8 = 1
    /// Header plus the largest frame without GSO that a TAP with a 64 KiB MTU could carry.
    public static let maxPacket = headerSize + 65550

    public let deviceID: UInt32 = 1
    public let queueCount = 2
    public let features: UInt64 = VirtioFeature.version1 | VirtioFeature.indirectDescriptors
        | VirtioFeature.eventIndex | VirtioNet.featureMAC | VirtioNet.featureStatus
    public let mac: [UInt8]
    /// The backend's name for messages (the TAP interface).
    public let backendName: String
    let fd: Int32

    /// Frames moved and frames dropped (no room in the guest's buffer, or the host refused them).
    public let rxFrames = Atomic<UInt64>(0), txFrames = Atomic<UInt64>(0)
    public let rxDropped = Atomic<UInt64>(0), txDropped = Atomic<UInt64>(0)

    struct Active {
        var rx: Virtqueue
        var tx: Virtqueue
        let context: VirtioContext
        /// An rx chain popped for a frame that has not arrived yet.
        var heldRX: DescriptorChain?
        /// Whether the backend fd is registered with the event loop. Reading stops while the
        /// guest has no rx buffers; frames wait in the TAP's own queue meanwhile.
        var watching = false
        var packet = [UInt8](repeating: 0, count: VirtioNet.maxPacket)
    }
    private let active = Mutex<Active?>(nil)

    /// Why the device stopped: a malformed request from the guest (or a dead backend);
    /// it does nothing more until the driver resets it.
    enum Violation: Error, CustomStringConvertible {
        case queue(VirtqueueError)
        case writableTX, readableRX
        case txLength(Int)
        case memory(GuestMemoryError)
        /// Not the guest's fault, but the device cannot go on either.
        case backend(Errno)
        var description: String {
            switch self {
            case .queue(let e): return "\(e)"
            case .writableTX: return "transmit chain has a device-writable buffer"
            case .readableRX: return "receive chain has a device-readable buffer"
            case .txLength(let n): return "transmit chain of \(n) bytes (header \(VirtioNet.headerSize), at most \(VirtioNet.maxPacket))"
            case .memory(let e): return "\(e)"
            case .backend(let e): return "backend \(e)"
            }
        }
    }

    /// Takes ownership of `backend`, which must be nonblocking.
    public init(backend: consuming FileDescriptor, name: String, mac: [UInt8]) {
        precondition(mac.count == 6, "a MAC address has 6 bytes")
        fd = backend.release()
        backendName = name
        self.mac = mac
    }

    deinit { Glibc.close(fd) }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        // mac[6], status (le16); max_virtqueue_pairs and mtu exist only with MQ and MTU.
        let status = VirtioNet.statusLinkUp
        serveConfig(mac + [UInt8(truncatingIfNeeded: status), UInt8(status >> 8)], offset: offset, into: data)
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(queues: [Virtqueue], context: VirtioContext) {
        active.withLock { state in
            if state?.watching == true { context.events.unwatch(fd) }
            state = Active(rx: queues[VirtioNet.rxQueue], tx: queues[VirtioNet.txQueue], context: context)
            startReading(&state!)
        }
    }

    public func liveQueues() -> [Virtqueue]? { active.withLock { $0.map { [$0.rx, $0.tx] } } }

    public func reset() {
        active.withLock { state in
            if state?.watching == true { state!.context.events.unwatch(fd) }
            state = nil
        }
    }

    public func process(queue index: Int) {
        active.withLock { state in
            guard state != nil else { return }
            switch index {
            case VirtioNet.rxQueue: if !state!.watching { startReading(&state!) } // new buffers: read again
            case VirtioNet.txQueue: run(&state, "transmit", transmit)
            default: break
            }
        }
    }

    /// Runs when the backend has frames to read (on the event loop thread).
    func backendReadable() {
        active.withLock { state in
            guard state != nil else { return }
            run(&state, "receive", receive)
        }
    }

    private func startReading(_ a: inout Active) {
        do {
            try a.context.events.watch(fd) { [weak self] in self?.backendReadable() }
            a.watching = true
        } catch {
            a.context.fail("virtio-net \(backendName): cannot watch the backend: \(error)")
        }
    }

    /// Runs `work`; a violation fails the device and drops its state until the driver resets it.
    private func run(_ state: inout Active?, _ what: String, _ work: (inout Active) throws(Violation) -> Void) {
        do {
            try work(&state!)
        } catch {
            let a = state!
            if a.watching { a.context.events.unwatch(fd) }
            state = nil
            a.context.fail("virtio-net \(backendName) \(what): \(error)")
        }
    }

    /// Sends every available transmit chain to the backend.
    func transmit(_ a: inout Active) throws(Violation) {
        let memory = a.context.memory
        var completed = false
        while let chain = try pop(&a.tx, memory) {
            guard chain.buffers.allSatisfy({ !$0.writable }) else { throw .writableTX }
            let total = chain.buffers.reduce(0) { $0 + Int($1.length) }
            guard total >= VirtioNet.headerSize, total <= VirtioNet.maxPacket else { throw .txLength(total) }
            var offset = 0
            for b in chain.buffers {
                let range = offset..<offset + Int(b.length)
                let failure = a.packet.withUnsafeMutableBytes { p -> GuestMemoryError? in
                    do throws(GuestMemoryError) { try memory.read(into: UnsafeMutableRawBufferPointer(rebasing: p[range]), at: b.address) } catch { return error }
                    return nil
                }
                if let failure { throw .memory(failure) }
                offset = range.upperBound
            }
            // Nothing was negotiated that the header could ask of the host.
            for i in 0..<VirtioNet.headerSize { a.packet[i] = 0 }
            let n = a.packet.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, total) }
            if n == total { txFrames.add(1, ordering: .relaxed) } else { txDropped.add(1, ordering: .relaxed) }
            do { try a.tx.push(head: chain.head, written: 0, memory) } catch { throw .queue(error) }
            completed = true
        }
        if completed { try interruptIfNeeded(&a.tx, a.context) }
    }

    /// Moves frames from the backend into receive chains until either runs out.
    func receive(_ a: inout Active) throws(Violation) {
        let memory = a.context.memory
        var delivered = false
        defer { if delivered { try? interruptIfNeeded(&a.rx, a.context) } }
        while true {
            let next: DescriptorChain?
            if let held = a.heldRX { next = held } else { next = try pop(&a.rx, memory) }
            guard let chain = next else {
                // No buffers: stop reading until the driver adds some and notifies the rx queue.
                a.context.events.unwatch(fd)
                a.watching = false
                break
            }
            guard chain.buffers.allSatisfy(\.writable) else { throw .readableRX }
            a.heldRX = chain
            let n = a.packet.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                // The interface went away (or worse): nothing more will come from it.
                throw .backend(Errno.current("read"))
            }
            if n == 0 { throw .backend(Errno(EPIPE, call: "read: the backend closed")) } // else this loop would spin
            guard n >= VirtioNet.headerSize, let written = try place(&a.packet, count: n, into: chain, memory) else {
                rxDropped.add(1, ordering: .relaxed)
                continue
            }
            a.heldRX = nil
            do { try a.rx.push(head: chain.head, written: written, memory) } catch { throw .queue(error) }
            rxFrames.add(1, ordering: .relaxed)
            delivered = true
        }
    }

    /// Copies a packet (header + frame) into a chain's buffers; nil when it does not fit or
    /// needs an offload the guest did not negotiate.
    func place(_ packet: inout [UInt8], count: Int, into chain: DescriptorChain, _ memory: GuestMemory) throws(Violation) -> UInt32? {
        let capacity = chain.buffers.reduce(0) { $0 + Int($1.length) }
        guard count <= capacity else { return nil }
        // gso_type (byte 1) must be NONE and no partial checksum: TAP offloads are never enabled.
        guard packet[1] == 0, packet[0] & VirtioNet.headerFlagNeedsChecksum == 0 else { return nil }
        for i in 0..<10 { packet[i] = 0 }
        packet[10] = 1; packet[11] = 0 // num_buffers: always one without MRG_RXBUF
        var offset = 0
        for b in chain.buffers where offset < count {
            let range = offset..<offset + min(Int(b.length), count - offset)
            let failure = packet.withUnsafeBytes { p -> GuestMemoryError? in
                do throws(GuestMemoryError) { try memory.write(UnsafeRawBufferPointer(rebasing: p[range]), at: b.address) } catch { return error }
                return nil
            }
            if let failure { throw .memory(failure) }
            offset = range.upperBound
        }
        return UInt32(count)
    }

    private func pop(_ queue: inout Virtqueue, _ memory: GuestMemory) throws(Violation) -> DescriptorChain? {
        do { return try queue.pop(memory) } catch { throw .queue(error) }
    }

    private func interruptIfNeeded(_ queue: inout Virtqueue, _ context: VirtioContext) throws(Violation) {
        do { if try queue.needsInterrupt(context.memory) { context.interrupt() } } catch { throw .queue(error) }
    }
}
