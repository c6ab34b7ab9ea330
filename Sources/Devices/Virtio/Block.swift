import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// virtio-blk (virtio 1.x, 5.2) backed by a raw image file. Reads and writes go straight
/// between the file and guest memory; a completed FLUSH means `fdatasync` returned.
public final class VirtioBlock: VirtioDevice {
    public static let sectorSize = 512
    static let featureSegMax: UInt64 = 1 << 2
    static let featureReadOnly: UInt64 = 1 << 5
    static let featureFlush: UInt64 = 1 << 9
    static let requestIn: UInt32 = 0, requestOut: UInt32 = 1, requestFlush: UInt32 = 4, requestGetID: UInt32 = 8
    static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2
    static let segMax: UInt32 = 126
    static let idLength = 20

    public let deviceID: UInt32 = 2
    public let queueCount = 1
    public let features: UInt64
    public let readOnly: Bool
    public let path: String
    let fd: Int32
    /// With a write layer the guest may write, but the image is opened read-only and never changes.
    public let layer: WriteLayer?
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    public let sectors: UInt64
    let serial: [UInt8]
    /// The disk's rate limit (docs/net.md, "Rate limits"); nil: unlimited.
    public let throttle: Throttle?

    struct Active {
        var queue: Virtqueue
        let context: VirtioContext
        /// A request was refused by the rate limit: nothing more is taken from the queue until
        /// the throttle's timer fires (the refused request stays on the ring, not popped).
        var throttled = false
    }
    private let active = Mutex<Active?>(nil)

    public enum OpenError: Error, CustomStringConvertible {
        case open(String, Errno)
        case timer(String, Errno)
        public var description: String {
            switch self {
            case .open(let path, let e): return "cannot open disk \(path): \(e)"
            case .timer(let path, let e): return "disk \(path): cannot create its rate limit's timer: \(e)"
            }
        }
    }

    public init(path: String, readOnly: Bool, overlay: Bool = false, serial: String, limit: RateLimit = .unlimited,
                clock: @escaping RateClock = monotonicNanoseconds) throws(OpenError) {
        do { throttle = try Throttle(limit, clock: clock) } catch { throw .timer(path, error) }
        let raw = Glibc.open(path, (readOnly || overlay ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        if raw < 0 { throw .open(path, Errno.current("open")) }
        var st = stat()
        fstat(raw, &st)
        fd = raw
        self.path = path
        self.readOnly = readOnly
        sectors = UInt64(st.st_size) / UInt64(VirtioBlock.sectorSize)
        if overlay && !readOnly {
            do { layer = try WriteLayer(sectors: sectors) } catch {
                Glibc.close(raw)
                throw .open(path, error)
            }
        } else {
            layer = nil
        }
        self.serial = Array(serial.utf8.prefix(VirtioBlock.idLength))
        features = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | VirtioBlock.featureSegMax | VirtioBlock.featureFlush | (readOnly ? VirtioBlock.featureReadOnly : 0)
    }

    deinit { Glibc.close(fd) }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        var config = [UInt8](repeating: 0, count: 24)
        for i in 0..<8 { config[i] = UInt8(truncatingIfNeeded: sectors >> (8 * UInt64(i))) }
        for i in 0..<4 { config[12 + i] = UInt8(truncatingIfNeeded: VirtioBlock.segMax >> (8 * UInt32(i))) }
        serveConfig(config, offset: offset, into: data)
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(queues: [Virtqueue], context: VirtioContext) {
        active.withLock { state in
            if let throttle {
                if let old = state { old.context.events.unwatch(throttle.timer.fd) }
                do { try context.events.watch(throttle.timer.fd) { [weak self] in self?.tokensBack() } }
                catch { context.fail("virtio-blk \(path): cannot watch the rate limit's timer: \(error)") }
            }
            state = Active(queue: queues[0], context: context)
        }
    }

    public func reset() {
        active.withLock { state in
            if let throttle, let old = state { old.context.events.unwatch(throttle.timer.fd) }
            state = nil
        }
    }

    /// Requests the guest queued before a snapshot may wait for no further notification: look
    /// at the ring once the device thread runs (restore happens before it does).
    public func restored() { throttle?.timer.arm(after: 1) }

    /// The throttle's timer fired (device thread): take requests again.
    func tokensBack() {
        throttle?.timer.acknowledge()
        active.withLock { $0?.throttled = false }
        process(queue: 0)
    }

    public func liveQueues() -> [Virtqueue]? { active.withLock { $0.map { [$0.queue] } } }

    public func process(queue index: Int) {
        active.withLock { state in
            // A failed queue stays stopped until reset; a throttled one until its timer fires.
            guard var a = state, a.queue.ready, !a.throttled else { return }
            defer { state = a }
            do {
                var completed = false
                while let chain = try a.queue.pop(a.context.memory) {
                    if let throttle, !throttle.admit(bytes: cost(chain, a.context.memory)) {
                        a.queue = a.queue.rewound(by: 1) // popped again, whole, when the timer fires
                        a.throttled = true
                        break
                    }
                    let written = handle(chain, a.context.memory)
                    try a.queue.push(head: chain.head, written: written, a.context.memory)
                    completed = true
                }
                if completed, try a.queue.needsInterrupt(a.context.memory) { a.context.interrupt() }
            } catch {
                a.context.fail("virtio-blk \(path): \(error)")
                a.queue.ready = false
            }
        }
    }

    /// The bytes a request moves, as its rate limit counts them: a read's or a write's data (a
    /// malformed request costs nothing: it fails at once). Every request is also one operation.
    func cost(_ chain: DescriptorChain, _ memory: GuestMemory) -> UInt64 {
        let readable = chain.readable
        guard let header = requestHeader(readable, memory) else { return 0 }
        switch header.type {
        case VirtioBlock.requestIn:
            let total = chain.writable.reduce(UInt64(0)) { $0 + UInt64($1.length) }
            return total > 0 ? total - 1 : 0 // less the status byte
        case VirtioBlock.requestOut: return dataInBuffers(readable).reduce(UInt64(0)) { $0 + UInt64($1.length) }
        default: return 0
        }
    }

    /// Executes one request; returns the bytes written into the guest's buffers (data + status).
    func handle(_ chain: DescriptorChain, _ memory: GuestMemory) -> UInt32 {
        let readable = chain.readable, writable = chain.writable
        // The status byte is the last byte of the last writable buffer.
        guard let statusBuffer = writable.last, statusBuffer.length >= 1 else { return 0 }
        let statusAddress = statusBuffer.address + UInt64(statusBuffer.length) - 1
        var dataOut = writable.dropLast().map { $0 }
        if statusBuffer.length > 1 {
            dataOut.append(Buffer(address: statusBuffer.address, length: statusBuffer.length - 1, writable: true))
        }
        var written: UInt32 = 0
        let status: UInt8
        if let header = requestHeader(readable, memory) {
            let dataIn = dataInBuffers(readable)
            switch header.type {
            case VirtioBlock.requestIn:
                status = transfer(dataOut, sector: header.sector, memory, toGuest: true)
                if status == VirtioBlock.statusOK { written = dataOut.reduce(0) { $0 + $1.length } }
            case VirtioBlock.requestOut:
                status = readOnly ? VirtioBlock.statusIOError : transfer(dataIn, sector: header.sector, memory, toGuest: false)
            case VirtioBlock.requestFlush:
                // A write layer is discarded with the VM: there is nothing durable to flush.
                status = readOnly || layer != nil || fdatasync(fd) == 0 ? VirtioBlock.statusOK : VirtioBlock.statusIOError
            case VirtioBlock.requestGetID:
                var id = serial + [UInt8](repeating: 0, count: VirtioBlock.idLength - serial.count)
                var left = id.count
                for b in dataOut where left > 0 {
                    let n = min(Int(b.length), left)
                    try? memory.write(Array(id.prefix(n)), at: b.address)
                    id.removeFirst(n); left -= n; written += UInt32(n)
                }
                status = VirtioBlock.statusOK
            default:
                status = VirtioBlock.statusUnsupported
            }
        } else {
            status = VirtioBlock.statusIOError
        }
        do { try memory.write(status, at: statusAddress) } catch { return written }
        return written + 1
    }

    /// The 16-byte request header (type, reserved, sector), which may span buffers.
    func requestHeader(_ readable: [Buffer], _ memory: GuestMemory) -> (type: UInt32, sector: UInt64)? {
        var bytes: [UInt8] = []
        for b in readable where bytes.count < 16 {
            guard let chunk = try? memory.read(min(Int(b.length), 16 - bytes.count), at: b.address) else { return nil }
            bytes += chunk
        }
        guard bytes.count == 16 else { return nil }
        func le<T: FixedWidthInteger>(_ o: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[o + $1]) << (8 * $1) }
        }
        return (le(0, UInt32.self), le(8, UInt64.self))
    }

    /// The readable buffers after the 16-byte header: the data of a write.
    func dataInBuffers(_ readable: [Buffer]) -> [Buffer] {
        var skip: UInt32 = 16
        var out: [Buffer] = []
        for b in readable {
            if skip >= b.length { skip -= b.length; continue }
            out.append(Buffer(address: b.address + UInt64(skip), length: b.length - skip, writable: false))
            skip = 0
        }
        return out
    }

    /// Moves the buffers' bytes between the image at `sector` and guest memory.
    func transfer(_ buffers: [Buffer], sector: UInt64, _ memory: GuestMemory, toGuest: Bool) -> UInt8 {
        let total = buffers.reduce(UInt64(0)) { $0 + UInt64($1.length) }
        guard total % UInt64(VirtioBlock.sectorSize) == 0, sector <= sectors,
              total / UInt64(VirtioBlock.sectorSize) <= sectors - sector else { return VirtioBlock.statusIOError }
        var offset = Int(sector) * VirtioBlock.sectorSize
        for b in buffers {
            do {
                if let layer {
                    try transfer(b, offset: offset, layer: layer, memory, toGuest: toGuest)
                } else if toGuest {
                    try memory.load(fromFile: fd, offset: offset, count: Int(b.length), at: b.address)
                } else {
                    try memory.store(toFile: fd, offset: offset, count: Int(b.length), from: b.address)
                }
            } catch {
                return VirtioBlock.statusIOError
            }
            offset += Int(b.length)
        }
        return VirtioBlock.statusOK
    }

    /// One buffer through the write layer: writes land in the layer; reads take each run of
    /// sectors from wherever it currently lives. A buffer that is not whole sectors is refused.
    func transfer(_ b: Buffer, offset: Int, layer: WriteLayer, _ memory: GuestMemory, toGuest: Bool) throws {
        let size = UInt64(VirtioBlock.sectorSize)
        guard UInt64(b.length) % size == 0 else { throw Errno(EINVAL, call: "partial sector") }
        let first = UInt64(offset) / size, count = UInt64(b.length) / size
        if !toGuest {
            try memory.store(toFile: layer.fd, offset: offset, count: Int(b.length), from: b.address)
            layer.markWritten(sector: first, count: count)
            return
        }
        for run in layer.runs(sector: first, count: count) {
            let at = b.address + (run.sector - first) * size
            try memory.load(fromFile: run.inLayer ? layer.fd : fd, offset: Int(run.sector * size),
                            count: Int(run.count * size), at: at)
        }
    }
}
