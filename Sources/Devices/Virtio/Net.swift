import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// virtio-net (virtio 1.x, 5.1) with one receive and one transmit queue, backed by a file
/// descriptor that carries one Ethernet frame per read or write behind a 12-byte
/// virtio_net_hdr: a TAP opened with IFF_VNET_HDR (or, in tests, a datagram socket).
///
/// With a backend that takes offloads (a TAP, through `offloads`), the device offers checksum
/// and TCP segmentation offloads both ways and mergeable receive buffers: the header crosses
/// between guest and TAP unchanged once checked, and the TAP is told (TUNSETOFFLOAD) which
/// offloads the guest accepts. Fewer, larger frames are the lever where the guest's kernel is
/// the cost (docs/net.md). Without such a backend no offload is offered and the header is zeroed.
public final class VirtioNet: VirtioDevice {
    static let statusLinkUp: UInt16 = 1
    static let rxQueue = 0, txQueue = 1
    public static let headerSize = NetHeader.size
    /// Header plus the largest frame either way: a 64 KiB TCP segment (GSO) with its Ethernet
    /// and IP headers, or a frame on a TAP with a 64 KiB MTU.
    public static let maxPacket = headerSize + 65550
    /// Features offered whatever the backend.
    public static let baseFeatures = VirtioFeature.version1 | VirtioFeature.indirectDescriptors
        | VirtioFeature.eventIndex | NetFeature.mac | NetFeature.status

    /// Sets the backend's offloads (TUNSETOFFLOAD on a TAP).
    public typealias OffloadControl = @Sendable (TapOffloads) throws(Errno) -> Void

    public let deviceID: UInt32 = 1
    public let queueCount = 2
    public let features: UInt64
    public let mac: [UInt8]
    /// The backend's name for messages (the TAP interface).
    public let backendName: String
    let fd: Int32
    /// Each direction's rate limit (docs/net.md, "Rate limits"); nil: unlimited.
    public let rxThrottle: Throttle?, txThrottle: Throttle?

    /// Frames moved and frames dropped (no room in the guest's buffers, an offload the guest
    /// did not negotiate, or the host refused them).
    public let rxFrames = Atomic<UInt64>(0), txFrames = Atomic<UInt64>(0)
    public let rxDropped = Atomic<UInt64>(0), txDropped = Atomic<UInt64>(0)
    /// TUNSETOFFLOAD calls that failed (the TAP then hands over whole frames, which every guest takes).
    public let offloadFailures = Atomic<UInt64>(0)

    struct Active {
        var rx: Virtqueue
        var tx: Virtqueue
        let context: VirtioContext
        /// MRG_RXBUF negotiated: a frame may span several receive chains.
        let mergeable: Bool
        /// Receive chains popped and not yet used, oldest first: for the frame in `rxPacket`, or
        /// for the next frame. They are always the last chains popped (see `liveQueues`).
        var held: [DescriptorChain] = []
        /// Bytes (header included) of a frame read from the backend that waits in `rxPacket` for
        /// more receive chains; 0 when none.
        var pending = 0
        /// Whether the backend fd is registered with the event loop. Reading stops while the
        /// guest has no rx buffers; frames wait in the TAP's own queue meanwhile.
        var watching = false
        /// The frame in `rxPacket` is not yet admitted by the receive rate limit.
        var unpaid = false
        /// A direction's rate limit refused a frame: that direction waits for its throttle's
        /// timer (receive with the backend unwatched, transmit with the chain left on the ring).
        var rxThrottled = false, txThrottled = false
        // One byte over the largest packet, so that a read that fills it is known to be too long.
        var rxPacket = [UInt8](repeating: 0, count: VirtioNet.maxPacket + 1)
        var txPacket = [UInt8](repeating: 0, count: VirtioNet.maxPacket)

        init(rx: Virtqueue, tx: Virtqueue, context: VirtioContext) {
            self.rx = rx; self.tx = tx; self.context = context
            mergeable = context.features & NetFeature.mergeableRXBuffers != 0
        }
    }
    private let active = Mutex<Active?>(nil)

    /// The backend's offloads follow what the driver negotiated. They change on activation and
    /// reset (vCPU thread, or the restoring thread) but are set on the device thread, which
    /// `offloadSignal` wakes: the TAP ioctl stays out of the vCPU threads' seccomp policy.
    struct Offloads {
        var registry: (any EventRegistry)?
        var wanted: TapOffloads = []
        var applied: TapOffloads = []
    }
    private let offloadControl: OffloadControl?
    private let offloadSignal: Int32
    private let offloads = Mutex(Offloads())

    /// Why the device stopped: a malformed request from the guest (or a dead backend);
    /// it does nothing more until the driver resets it.
    enum Violation: Error, CustomStringConvertible {
        case queue(VirtqueueError)
        case writableTX, readableRX
        case txLength(Int)
        case header(NetHeader.Problem)
        case memory(GuestMemoryError)
        /// Not the guest's fault, but the device cannot go on either.
        case backend(Errno)
        var description: String {
            switch self {
            case .queue(let e): return "\(e)"
            case .writableTX: return "transmit chain has a device-writable buffer"
            case .readableRX: return "receive chain has a device-readable buffer"
            case .txLength(let n): return "transmit chain of \(n) bytes (header \(VirtioNet.headerSize), at most \(VirtioNet.maxPacket))"
            case .header(let p): return "transmit \(p)"
            case .memory(let e): return "\(e)"
            case .backend(let e): return "backend \(e)"
            }
        }
    }

    /// Takes ownership of `backend`, which must be nonblocking. With `offloads` (a TAP's
    /// TUNSETOFFLOAD), checksum and segmentation offloads and MRG_RXBUF are offered if the
    /// backend accepts every offload Kiln may ask of it.
    ///
    /// `rxLimit` and `txLimit` limit the guest's receive and transmit separately; a limit's timer
    /// is created here, so a limited device can fail to start (`Errno`).
    public init(backend: consuming FileDescriptor, name: String, mac: [UInt8], offloads: OffloadControl? = nil,
                rxLimit: RateLimit = .unlimited, txLimit: RateLimit = .unlimited,
                clock: @escaping RateClock = monotonicNanoseconds) throws(Errno) {
        precondition(mac.count == 6, "a MAC address has 6 bytes")
        let raw = backend.release()
        do {
            rxThrottle = try Throttle(rxLimit, clock: clock)
            txThrottle = try Throttle(txLimit, clock: clock)
        } catch {
            Glibc.close(raw)
            throw error
        }
        fd = raw
        backendName = name
        self.mac = mac
        var features = VirtioNet.baseFeatures
        var signal: Int32 = -1
        if let offloads {
            do throws(Errno) {
                try offloads([.checksum, .tso4, .tso6, .tsoECN])
                try offloads([])
                signal = try EventFD(nonBlocking: true).release()
                features |= NetFeature.offloads
            } catch {
                writeRaw(2, "kiln: virtio-net \(name): no offloads (\(error))\n")
            }
        }
        self.features = features
        offloadSignal = signal
        offloadControl = signal >= 0 ? offloads : nil
    }

    deinit {
        Glibc.close(fd)
        if offloadSignal >= 0 { Glibc.close(offloadSignal) }
    }

    /// What the TAP may hand over for a driver that negotiated `features`.
    public static func tapOffloads(for features: UInt64) -> TapOffloads {
        guard features & NetFeature.guestChecksum != 0 else { return [] }
        var o: TapOffloads = .checksum
        if features & NetFeature.guestTSO4 != 0 { o.insert(.tso4) }
        if features & NetFeature.guestTSO6 != 0 { o.insert(.tso6) }
        if features & NetFeature.guestECN != 0, !o.isDisjoint(with: [.tso4, .tso6]) { o.insert(.tsoECN) }
        return o
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        // mac[6], status (le16); max_virtqueue_pairs and mtu exist only with MQ and MTU.
        let status = VirtioNet.statusLinkUp
        serveConfig(mac + [UInt8(truncatingIfNeeded: status), UInt8(status >> 8)], offset: offset, into: data)
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(queues: [Virtqueue], context: VirtioContext) {
        active.withLock { state in
            if let old = state { unwatchAll(old) }
            state = Active(rx: queues[VirtioNet.rxQueue], tx: queues[VirtioNet.txQueue], context: context)
            startReading(&state!)
            watchTimer(rxThrottle, context) { [weak self] in self?.rxTokensBack() }
            watchTimer(txThrottle, context) { [weak self] in self?.txTokensBack() }
        }
        requestOffloads(VirtioNet.tapOffloads(for: context.features), events: context.events)
    }

    /// The receive queue is saved as if the chains held for a frame had not been popped: frames
    /// in flight are lost in a snapshot, the guest's buffers are not.
    public func liveQueues() -> [Virtqueue]? {
        active.withLock { $0.map { [$0.rx.rewound(by: $0.held.count), $0.tx] } }
    }

    public func reset() {
        active.withLock { state in
            if let old = state { unwatchAll(old) }
            state = nil
        }
        requestOffloads([], events: nil)
    }

    /// Frames the guest queued before a snapshot may wait for no further notification: look at
    /// both directions once the device thread runs (restore happens before it does).
    public func restored() {
        rxThrottle?.timer.arm(after: 1)
        txThrottle?.timer.arm(after: 1)
    }

    private func watchTimer(_ throttle: Throttle?, _ context: VirtioContext, _ handler: @escaping @Sendable () -> Void) {
        guard let throttle else { return }
        do { try context.events.watch(throttle.timer.fd, handler) }
        catch { context.fail("virtio-net \(backendName): cannot watch a rate limit's timer: \(error)") }
    }

    private func unwatchAll(_ a: Active) {
        if a.watching { a.context.events.unwatch(fd) }
        for t in [rxThrottle, txThrottle] { if let t { a.context.events.unwatch(t.timer.fd) } }
    }

    /// The receive limit's timer fired (device thread): read the backend again.
    func rxTokensBack() {
        rxThrottle?.timer.acknowledge()
        active.withLock { state in
            guard state != nil, state!.rxThrottled else { return }
            state!.rxThrottled = false
            if !state!.watching { startReading(&state!) }
            run(&state, "receive", receive)
        }
    }

    /// The transmit limit's timer fired (device thread): send what the guest queued meanwhile.
    func txTokensBack() {
        txThrottle?.timer.acknowledge()
        active.withLock { state in
            guard state != nil else { return }
            state!.txThrottled = false
            run(&state, "transmit", transmit)
        }
    }

    public func process(queue index: Int) {
        active.withLock { state in
            guard state != nil else { return }
            switch index {
            case VirtioNet.rxQueue:
                guard !state!.watching, !state!.rxThrottled else { return }
                startReading(&state!) // new buffers: read again
                // A frame that waits for buffers goes now: the backend may have nothing more to say.
                if state!.pending > 0 { run(&state, "receive", receive) }
            case VirtioNet.txQueue:
                guard !state!.txThrottled else { return }
                run(&state, "transmit", transmit)
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

    private func stopReading(_ a: inout Active) {
        a.context.events.unwatch(fd)
        a.watching = false
    }

    /// Records the offloads the backend should have and wakes the device thread to set them.
    private func requestOffloads(_ wanted: TapOffloads, events: (any EventRegistry)?) {
        guard offloadControl != nil else { return }
        let register: (any EventRegistry)? = offloads.withLock { o in
            o.wanted = wanted
            guard o.registry == nil, let events else { return nil }
            o.registry = events
            return events
        }
        if let register {
            do { try register.watch(offloadSignal) { [weak self] in self?.applyOffloads() } }
            catch { writeRaw(2, "kiln: virtio-net \(backendName): cannot watch the offload signal: \(error)\n") }
        }
        var one: UInt64 = 1
        _ = Glibc.write(offloadSignal, &one, 8)
    }

    /// Sets the backend's offloads to the wanted ones (on the device thread).
    func applyOffloads() {
        var count: UInt64 = 0
        _ = Glibc.read(offloadSignal, &count, 8)
        guard let control = offloadControl else { return }
        offloads.withLock { o in
            guard o.wanted != o.applied else { return }
            do throws(Errno) {
                try control(o.wanted)
            } catch {
                offloadFailures.add(1, ordering: .relaxed)
                writeRaw(2, "kiln: virtio-net \(backendName): \(error)\n")
            }
            o.applied = o.wanted // a failure is not retried: the TAP keeps handing over whole frames
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
        let offloading = features & NetFeature.offloads != 0
        var completed = false
        sending: while let chain = try pop(&a.tx, memory) {
            guard chain.buffers.allSatisfy({ !$0.writable }) else { throw .writableTX }
            let total = chain.buffers.reduce(0) { $0 + Int($1.length) }
            guard total >= VirtioNet.headerSize, total <= VirtioNet.maxPacket else { throw .txLength(total) }
            if let txThrottle, !txThrottle.admit(bytes: UInt64(total - VirtioNet.headerSize)) {
                a.tx = a.tx.rewound(by: 1) // sent, whole, when the timer fires
                a.txThrottled = true
                break sending
            }
            var offset = 0
            for b in chain.buffers {
                let range = offset..<offset + Int(b.length)
                let failure = a.txPacket.withUnsafeMutableBytes { p -> GuestMemoryError? in
                    do throws(GuestMemoryError) { try memory.read(into: UnsafeMutableRawBufferPointer(rebasing: p[range]), at: b.address) } catch { return error }
                    return nil
                }
                if let failure { throw .memory(failure) }
                offset = range.upperBound
            }
            if offloading {
                let header = a.txPacket.withUnsafeBytes { NetHeader($0) }
                if let problem = header.checkTransmit(frameLength: total - VirtioNet.headerSize, features: a.context.features) {
                    throw .header(problem)
                }
                a.txPacket[10] = 0; a.txPacket[11] = 0 // num_buffers means nothing on transmit
            } else {
                // Nothing was offered that the header could ask of the host.
                for i in 0..<VirtioNet.headerSize { a.txPacket[i] = 0 }
            }
            let n = a.txPacket.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, total) }
            if n == total { txFrames.add(1, ordering: .relaxed) } else { txDropped.add(1, ordering: .relaxed) }
            do { try a.tx.push(head: chain.head, written: 0, memory) } catch { throw .queue(error) }
            completed = true
        }
        if completed { try interruptIfNeeded(&a.tx, a.context) }
    }

    /// Moves frames from the backend into receive chains until either runs out.
    func receive(_ a: inout Active) throws(Violation) {
        var delivered = false
        defer { if delivered { try? interruptIfNeeded(&a.rx, a.context) } }
        while true {
            if a.pending == 0 {
                // A chain first: while the guest has none, frames wait in the backend.
                if a.held.isEmpty {
                    guard try holdRX(&a) else { stopReading(&a); return }
                }
                let n = a.rxPacket.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN { return }
                    // The interface went away (or worse): nothing more will come from it.
                    throw .backend(Errno.current("read"))
                }
                if n == 0 { throw .backend(Errno(EPIPE, call: "read: the backend closed")) } // else this loop would spin
                guard n >= VirtioNet.headerSize, n <= VirtioNet.maxPacket, admit(&a, count: n) else {
                    rxDropped.add(1, ordering: .relaxed)
                    continue
                }
                a.pending = n
                a.unpaid = rxThrottle != nil
            }
            if a.unpaid {
                // Over the limit the frame waits here and the backend is not read: further
                // frames queue in the TAP (which drops when full, as a slow link would).
                guard rxThrottle!.admit(bytes: UInt64(a.pending - VirtioNet.headerSize)) else {
                    stopReading(&a)
                    a.rxThrottled = true
                    return
                }
                a.unpaid = false
            }
            // Enough chains for the frame: one without MRG_RXBUF, as many as it takes with it.
            var chains = 1
            if a.mergeable {
                var capacity = 0
                while true {
                    if chains > a.held.count {
                        guard a.held.count < Int(a.rx.size) else { break } // all of the ring cannot hold it
                        guard try holdRX(&a) else { stopReading(&a); return } // the frame waits for buffers
                    }
                    capacity += a.held[chains - 1].buffers.reduce(0) { $0 + Int($1.length) }
                    if capacity >= a.pending { break }
                    chains += 1
                }
                if capacity < a.pending { drop(&a); continue }
            } else if a.held[0].buffers.reduce(0, { $0 + Int($1.length) }) < a.pending {
                drop(&a) // the chain is kept for the next frame
                continue
            }
            a.rxPacket[10] = UInt8(truncatingIfNeeded: chains); a.rxPacket[11] = UInt8(chains >> 8) // num_buffers
            var offset = 0
            for chain in a.held[0..<chains] {
                let written = try place(a.rxPacket, from: offset, count: a.pending - offset, into: chain, a.context.memory)
                offset += written
                do { try a.rx.push(head: chain.head, written: UInt32(written), a.context.memory) } catch { throw .queue(error) }
            }
            a.held.removeFirst(chains)
            a.pending = 0
            rxFrames.add(1, ordering: .relaxed)
            delivered = true
        }
    }

    /// Pops a receive chain into `held`; false when the guest has none.
    private func holdRX(_ a: inout Active) throws(Violation) -> Bool {
        guard let chain = try pop(&a.rx, a.context.memory) else { return false }
        guard chain.buffers.allSatisfy(\.writable) else { throw .readableRX }
        a.held.append(chain)
        return true
    }

    private func drop(_ a: inout Active) {
        a.pending = 0
        rxDropped.add(1, ordering: .relaxed)
    }

    /// Rewrites the header of the `count`-byte packet just read for the driver; false when the
    /// frame needs an offload the driver did not negotiate.
    private func admit(_ a: inout Active, count: Int) -> Bool {
        guard features & NetFeature.offloads != 0 else {
            // No offloads asked of the TAP: a partial checksum or GSO frame should not come.
            guard a.rxPacket[0] & NetHeader.needsChecksum == 0, a.rxPacket[1] == NetHeader.gsoNone else { return false }
            NetHeader(bufferCount: 1).bytes.withUnsafeBytes { h in
                a.rxPacket.withUnsafeMutableBytes { $0.copyMemory(from: h) }
            }
            return true
        }
        let features = a.context.features
        return a.rxPacket.withUnsafeMutableBytes { p in
            guard let header = NetHeader(UnsafeRawBufferPointer(p)).forReceive(features: features, bufferCount: 1) else { return false }
            header.store(into: p)
            return true
        }
    }

    /// Copies up to `count` bytes of `packet` from `offset` into a chain's buffers; returns how many.
    func place(_ packet: [UInt8], from offset: Int, count: Int, into chain: DescriptorChain, _ memory: GuestMemory) throws(Violation) -> Int {
        var done = 0
        for b in chain.buffers where done < count {
            let range = offset + done..<offset + done + min(Int(b.length), count - done)
            let failure = packet.withUnsafeBytes { p -> GuestMemoryError? in
                do throws(GuestMemoryError) { try memory.write(UnsafeRawBufferPointer(rebasing: p[range]), at: b.address) } catch { return error }
                return nil
            }
            if let failure { throw .memory(failure) }
            done += range.count
        }
        return done
    }

    private func pop(_ queue: inout Virtqueue, _ memory: GuestMemory) throws(Violation) -> DescriptorChain? {
        do { return try queue.pop(memory) } catch { throw .queue(error) }
    }

    private func interruptIfNeeded(_ queue: inout Virtqueue, _ context: VirtioContext) throws(Violation) {
        do { if try queue.needsInterrupt(context.memory) { context.interrupt() } } catch { throw .queue(error) }
    }
}
