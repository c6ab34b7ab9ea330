import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// virtio-fs (virtio 1.x, 5.11): a hiprio queue (FORGET, BATCH_FORGET) and one request queue
/// carrying FUSE requests, answered by a `FUSEServer` over one host directory. A device may be
/// created unbound (a template's spare slot, docs/volumes.md "Templates") and bound to a
/// directory when a clone is restored; until then every request is answered ENODEV.
///
/// Requests are served on a thread of the device's own (`serve(stop:)`, kiln-fs, under the fs
/// seccomp policy): the device thread only passes the notification on, so slow file I/O never
/// stalls the disks, network or vsock, and the calls the server needs stay out of their policy.
public final class VirtioFS: VirtioDevice {
    public static let tagLength = 36
    public let deviceID: UInt32 = 26
    public let queueCount = 2
    public let features = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
    public let tag: String
    /// Readable when a queue was notified; the worker waits on it.
    let kick: Int32
    private let bound: Mutex<FUSEServer?>
    private let worker = Atomic<Bool>(false)

    struct Active {
        var queues: [Virtqueue]
        let context: VirtioContext
    }
    private let active = Mutex<Active?>(nil)

    public enum TagError: Error, CustomStringConvertible {
        case invalid(String)
        case system(Errno)
        public var description: String {
            switch self {
            case .invalid(let tag): "virtio-fs tag '\(tag)' must be 1 to \(VirtioFS.tagLength) bytes of letters, digits, '-', '_' or '.'"
            case .system(let e): "virtio-fs: \(e)"
            }
        }
    }

    /// Whether `tag` can name a share: what the guest passes to `mount -t virtiofs TAG`.
    public static func isValidTag(_ tag: String) -> Bool {
        let u = Array(tag.utf8)
        return !u.isEmpty && u.count <= tagLength && u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x2E
        }
    }

    public init(tag: String, server: FUSEServer?) throws(TagError) {
        guard VirtioFS.isValidTag(tag) else { throw .invalid(tag) }
        do { kick = try EventFD(nonBlocking: true).release() } catch { throw .system(error) }
        self.tag = tag
        bound = Mutex(server)
    }

    deinit { Glibc.close(kick) }

    /// The directory this device serves, if bound.
    public var server: FUSEServer? { bound.withLock { $0 } }

    /// Binds a spare slot to a directory (before the restored VM runs).
    public func bind(_ server: FUSEServer) { bound.withLock { $0 = server } }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        // struct virtio_fs_config: tag[36] (not NUL-terminated when full), le32 num_request_queues.
        var config = Array(tag.utf8) + [UInt8](repeating: 0, count: VirtioFS.tagLength - tag.utf8.count)
        config += [1, 0, 0, 0]
        serveConfig(config, offset: offset, into: data)
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(queues: [Virtqueue], context: VirtioContext) {
        active.withLock { $0 = Active(queues: queues, context: context) }
    }

    public func reset() { active.withLock { $0 = nil } }

    public func liveQueues() -> [Virtqueue]? { active.withLock { $0?.queues } }

    public func process(queue index: Int) {
        if worker.load(ordering: .acquiring) {
            var one: UInt64 = 1
            _ = Glibc.write(kick, &one, 8)
        } else {
            serveQueues()
        }
    }

    /// The worker thread's loop: serves notified queues until `stop` is readable.
    public func serve(stop: Int32) {
        worker.store(true, ordering: .releasing)
        defer { worker.store(false, ordering: .releasing) }
        serveQueues() // anything notified before the worker took over
        var fds = [pollfd(fd: kick, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, -1)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[1].revents != 0 { return }
            var count: UInt64 = 0
            _ = Glibc.read(kick, &count, 8)
            serveQueues()
        }
    }

    /// Pops and answers every available request on both queues.
    public func serveQueues() {
        let server = self.server
        active.withLock { state in
            guard var a = state else { return }
            defer { state = a }
            var completed = false
            for q in a.queues.indices where a.queues[q].ready {
                do {
                    while let chain = try a.queues[q].pop(a.context.memory) {
                        let written = handle(chain, a.context.memory, server)
                        try a.queues[q].push(head: chain.head, written: written, a.context.memory)
                        completed = true
                    }
                    if completed, try a.queues[q].needsInterrupt(a.context.memory) { a.context.interrupt() }
                } catch {
                    a.context.fail("virtio-fs \(tag): \(error)")
                    a.queues[q].ready = false
                }
                completed = false
            }
        }
    }

    /// One request: the readable buffers in, the reply into the writable ones; returns the bytes written.
    func handle(_ chain: DescriptorChain, _ memory: GuestMemory, _ server: FUSEServer?) -> UInt32 {
        let readable = chain.readable
        let total = readable.reduce(0) { $0 + Int($1.length) }
        var request: [UInt8] = []
        let limit = total > FUSEServer.maxRequest ? FUSEHeader.size : total
        request.reserveCapacity(limit)
        for b in readable where request.count < limit {
            guard let chunk = try? memory.read(min(Int(b.length), limit - request.count), at: b.address) else { return 0 }
            request += chunk
        }
        let reply: [UInt8]?
        if let header = FUSERequest.header(request), total > FUSEServer.maxRequest || server == nil {
            let noReply = [FUSEOpcode.forget, FUSEOpcode.batchForget, FUSEOpcode.interrupt].contains(header.opcode)
            reply = noReply ? nil : FUSEReply.message(unique: header.unique, error: server == nil ? ENODEV : E2BIG)
        } else {
            reply = server?.handle(request)
        }
        guard var reply else { return 0 }
        let writable = chain.writable
        let capacity = writable.reduce(0) { $0 + Int($1.length) }
        if reply.count > capacity, let header = FUSERequest.header(request) {
            reply = FUSEReply.message(unique: header.unique, error: EIO)
        }
        guard reply.count <= capacity else { return 0 }
        var done = 0
        for b in writable where done < reply.count {
            let n = min(Int(b.length), reply.count - done)
            do { try memory.write(Array(reply[done..<(done + n)]), at: b.address) } catch { return UInt32(done) }
            done += n
        }
        return UInt32(done)
    }
}
