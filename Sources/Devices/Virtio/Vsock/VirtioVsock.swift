import Glibc
import GuestMemory
import LinuxSys
import Synchronization

/// virtio-vsock (virtio 1.x, 5.10) with Firecracker's hybrid host side: Kiln listens on a Unix
/// socket at `path`; a host client writes `CONNECT <port>\n` to reach a guest port, and a guest
/// connection to CID 2 port P is relayed to the Unix socket `path_P`. Stream sockets only.
public final class VirtioVsock: VirtioDevice {
    public let deviceID: UInt32 = 19
    public let queueCount = 3
    public let features = VirtioFeature.version1 | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
    public let guestCID: UInt64
    public let path: String
    let listener: FileDescriptor
    private let state: Mutex<VsockMux>

    public enum OpenError: Error, CustomStringConvertible {
        case badCID(UInt64)
        case listen(String, Errno)
        public var description: String {
            switch self {
            case .badCID(let cid): return "vsock guest CID \(cid) is reserved (use 3 or more)"
            case .listen(let path, let e): return "cannot listen on vsock socket \(path): \(e)"
            }
        }
    }

    /// Opens a connected socket for a guest connection to host port P, or nil to refuse it.
    public typealias Connector = @Sendable (_ port: UInt32) -> Int32?

    /// Creates the listening socket at `path` (which must not exist yet). Guest connections to
    /// port P go to `path_P`, or wherever `connector` says (a jailed VMM asks its supervisor).
    /// `heldLimit` bounds the guest's bytes held for all slow host readers together (`VirtioVsock.heldLimit`).
    public init(path: String, guestCID: UInt64, connector: Connector? = nil, heldLimit: Int = VirtioVsock.heldLimit) throws(OpenError) {
        guard guestCID >= 3, guestCID < 0xFFFF_FFFF else { throw .badCID(guestCID) }
        do { listener = try UnixSocket.listen(path: path) } catch { throw .listen(path, error) }
        self.path = path
        self.guestCID = guestCID
        let connect = connector ?? { port in try? UnixSocket.connect(path: "\(path)_\(port)").release() }
        state = Mutex(VsockMux(guestCID: guestCID, path: path, listener: listener.raw, connect: connect, heldLimit: heldLimit))
    }

    deinit { unlink(path) }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        serveConfig((0..<8).map { UInt8(truncatingIfNeeded: guestCID >> (8 * UInt64($0))) }, offset: offset, into: data)
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {}

    public func activate(queues: [Virtqueue], context: VirtioContext) {
        state.withLock { $0.activate(queues: queues, context: context, wake: { [weak self] fd in self?.hostEvent(fd) }) }
    }

    public func reset() { state.withLock { $0.deactivate() } }

    /// rx and tx: the event queue's notification is the guest's answer to a transport reset.
    public var queuesRecheckedAfterRestore: Range<Int> { 0..<2 }

    public func liveQueues() -> [Virtqueue]? {
        state.withLock { m in m.context == nil ? nil : [m.rx, m.tx, m.event] }
    }

    /// The connections as they stand, for a snapshot of a paused VM (the device thread is parked).
    public func save() -> VsockSavedState { state.withLock { $0.save() } }

    /// Hands the device the connections a snapshot saved, before the transport re-activates it
    /// (`restored()` then puts them back).
    public func prepareRestore(_ saved: VsockSavedState) { state.withLock { $0.pendingRestore = saved } }

    /// After a restore: the saved connections go on, host-initiated ones detached until a host
    /// client attaches (docs/vsock.md). Without saved state, or under a new CID, there is nothing
    /// to go on with: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET makes the guest reset its connected
    /// sockets (its listening sockets survive) and re-read the CID.
    public func restored() {
        state.withLock { m in
            if let saved = m.pendingRestore, saved.guestCID == guestCID { m.install(saved) } else { m.sendTransportReset() }
            m.pendingRestore = nil
        }
    }

    public func process(queue index: Int) {
        guard index < 2 else {
            // The event queue: the guest refilling it means it handled the transport reset.
            state.withLock { $0.eventQueueRefilled() }
            return
        }
        state.withLock { $0.pump() }
    }

    /// A backend socket (the listener or a connection) is ready; runs on the device thread.
    func hostEvent(_ fd: Int32) { state.withLock { $0.hostEvent(fd) } }

    /// The VM ended: close every connection and remove the socket file.
    public func shutdown() {
        state.withLock { $0.deactivate() }
        unlink(path)
    }

    /// Open connections, for tests and diagnostics.
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    /// Guest payload bytes held for host sockets that do not read, all connections together:
    /// past this the guest's tx queue waits until a host socket takes some (one connection holds
    /// at most 256 KiB, its advertised buffer, but 1024 of them would hold 256 MiB, twice the VMM
    /// cgroup's headroom over guest RAM). Host-to-guest bytes are bounded apart: 64 KiB staged a
    /// connection, read from its socket only as the guest gives credit.
    public static let heldLimit = 16 << 20

    /// Guest payload bytes held for host sockets that have not taken them yet, all connections together.
    public var guestBytesHeld: Int { state.withLock { $0.heldBytes } }

    /// Restored connections no host client has attached to yet.
    public var detachedCount: Int { state.withLock { $0.connections.values.filter { $0.state == .detached }.count } }
}

/// The connection table and both queues' packet processing, behind the device's lock.
struct VsockMux {
    static let bufAlloc: UInt32 = 256 << 10
    static let stageLimit = 64 << 10
    static let maxPayload: UInt32 = 64 << 10
    static let maxConnections = 1024
    /// Control packets waiting for rx buffers; past this, guest tx waits (it produces replies).
    static let controlLimit = 256
    static let firstHostPort: UInt32 = 1024

    typealias Key = VsockConnection.Key
    let guestCID: UInt64
    let path: String
    let listener: Int32
    let connect: VirtioVsock.Connector
    let heldLimit: Int
    var rx = Virtqueue(), tx = Virtqueue(), event = Virtqueue()
    var context: VirtioContext?
    var wake: (@Sendable (Int32) -> Void)?
    var connections: [Key: VsockConnection] = [:]
    var byFD: [Int32: VsockConnection] = [:]
    var control: [VsockHeader] = []
    var ready: [Key] = []
    var nextPort = VsockMux.firstHostPort
    /// A transport reset was sent and the guest has not handled it yet: host clients wait in the
    /// listen backlog, so a new connection cannot be reset by the guest's late handling (or reach the old CID).
    var awaitingResetAck = false
    var pendingRestore: VsockSavedState?

    init(guestCID: UInt64, path: String, listener: Int32, connect: @escaping VirtioVsock.Connector, heldLimit: Int = VirtioVsock.heldLimit) {
        self.guestCID = guestCID; self.path = path; self.listener = listener; self.connect = connect; self.heldLimit = heldLimit
    }

    /// Guest payload bytes no host socket has taken yet (detached connections' included).
    var heldBytes: Int { connections.values.reduce(0) { $0 + Int($1.unforwarded) } }

    // MARK: lifecycle

    mutating func activate(queues: [Virtqueue], context: VirtioContext, wake: @escaping @Sendable (Int32) -> Void) {
        rx = queues[0]; tx = queues[1]; event = queues[2]
        self.context = context
        self.wake = wake
        let listener = listener
        do { try context.events.watch(listener) { wake(listener) } }
        catch { context.fail("virtio-vsock \(path): cannot watch the listener: \(error)") }
    }

    mutating func deactivate() {
        guard let context else { return }
        context.events.unwatch(listener)
        for c in Array(byFD.values) { close(c) }
        connections.removeAll() // detached ones have no descriptor in byFD
        ready.removeAll()
        control.removeAll()
        awaitingResetAck = false
        self.context = nil
        wake = nil
    }

    static let eventTransportReset: UInt32 = 0

    /// Puts a struct virtio_vsock_event (one le32 id) into the guest's next event-queue buffer.
    mutating func sendTransportReset() {
        guard let context else { return }
        do {
            guard let chain = try event.pop(context.memory), let buffer = chain.writable.first, buffer.length >= 4 else { return }
            try? context.memory.write(VsockMux.eventTransportReset, at: buffer.address)
            try event.push(head: chain.head, written: 4, context.memory)
            try event.notifyOnNextAvailable(context.memory)
            if !awaitingResetAck { context.events.unwatch(listener) }
            awaitingResetAck = true
            if try event.needsInterrupt(context.memory) { context.interrupt() }
        } catch {
            broken(error)
        }
    }

    func save() -> VsockSavedState {
        VsockSavedState(guestCID: guestCID, nextPort: nextPort,
                        connections: connections.values.compactMap(\.saved).sorted { ($0.hostPort, $0.guestPort) < ($1.hostPort, $1.guestPort) },
                        control: control)
    }

    /// Puts saved connections back: host-initiated ones detached (each waits for an ATTACH);
    /// guest-initiated ones had a host peer that belongs to the original VM, so the guest gets RST.
    mutating func install(_ saved: VsockSavedState) {
        nextPort = saved.nextPort
        control = saved.control
        for s in saved.connections {
            let c = VsockConnection.restoring(s)
            guard s.hostInitiated else { control.append(header(c, .rst)); continue }
            c.creditUpdateQueued = control.contains { $0.op == VsockHeader.Op.creditUpdate.rawValue && $0.srcPort == s.hostPort && $0.dstPort == s.guestPort }
            connections[c.key!] = c
            if !c.staged.isEmpty { markReady(c) }
        }
        pump()
    }

    mutating func eventQueueRefilled() {
        guard awaitingResetAck, let context, let wake else { return }
        awaitingResetAck = false
        let listener = listener
        do { try context.events.watch(listener) { wake(listener) } }
        catch { context.fail("virtio-vsock \(path): cannot watch the listener: \(error)") }
        acceptClients()
        pump()
    }

    // MARK: host side

    mutating func hostEvent(_ fd: Int32) {
        guard context != nil else { return }
        if fd == listener { acceptClients() }
        else if let c = byFD[fd] {
            switch c.state {
            case .awaitingConnect: readConnectLine(c)
            case .connecting, .detached: break
            case .established:
                flushToHost(c)
                if byFD[fd] != nil { readFromHost(c) }
            }
            if byFD[fd] != nil { settle(c) }
        }
        pump()
    }

    mutating func acceptClients() {
        guard let context, let wake else { return }
        while true {
            let accepted: FileDescriptor?
            do { accepted = try UnixSocket.accept(listener) } catch { return }
            guard let fd = accepted else { return }
            guard byFD.count < VsockMux.maxConnections else { continue } // closed as it goes out of scope
            let raw = fd.raw
            do { try context.events.watch(raw) { wake(raw) } } catch { continue }
            byFD[raw] = VsockConnection(fd: fd, state: .awaitingConnect)
        }
    }

    /// Reads the client's `CONNECT <port>\n`; bytes after it are the first payload for the guest.
    mutating func readConnectLine(_ c: VsockConnection) {
        var buffer = [UInt8](repeating: 0, count: VsockConnection.connectLineLimit - c.staged.count)
        let got: Int?
        do { got = try buffer.withUnsafeMutableBytes { b throws(Errno) in try UnixSocket.receive(c.raw, into: b) } }
        catch { close(c); return }
        guard let n = got else { return }
        guard n > 0 else { close(c); return }
        c.staged += buffer[0..<n]
        guard let newline = c.staged.firstIndex(of: UInt8(ascii: "\n")) else {
            if c.staged.count >= VsockConnection.connectLineLimit { close(c) }
            return
        }
        let line = String(decoding: c.staged[..<newline], as: UTF8.self)
        c.staged.removeFirst(newline + 1)
        let words = line.split(separator: " ")
        guard words.count == 2, words[0] == "CONNECT" || words[0] == "ATTACH", let port = UInt32(words[1]) else { close(c); return }
        if words[0] == "ATTACH" { attach(c, guestPort: port); return }
        let hostPort = allocatePort()
        let key = Key(hostPort: hostPort, guestPort: port)
        c.key = key
        c.state = .connecting
        c.hostInitiated = true
        connections[key] = c
        control.append(header(c, .request))
        updateInterest(c)
    }

    /// `ATTACH <port>`: the client takes over the detached (restored) connection to that guest
    /// port, with the lowest host port if there are several; no packet goes to the guest. With
    /// none detached the client is closed without a reply.
    mutating func attach(_ c: VsockConnection, guestPort: UInt32) {
        guard let d = connections.values.filter({ $0.state == .detached && $0.key?.guestPort == guestPort })
            .min(by: { $0.key!.hostPort < $1.key!.hostPort }), let key = d.key else { close(c); return }
        let early = c.staged // bytes the client sent after its line: the first payload for the guest
        c.adopt(d)
        c.staged += early
        let ok = Array("OK \(key.hostPort)\n".utf8)
        c.pending = ok + c.pending
        c.localPrefix = ok.count
        connections[key] = c
        flushToHost(c)
        guard connections[key] === c else { return }
        if !c.staged.isEmpty { markReady(c) }
        settle(c)
    }

    mutating func allocatePort() -> UInt32 {
        let used = Set(connections.keys.map(\.hostPort))
        while used.contains(nextPort) { nextPort = nextPort == UInt32.max ? VsockMux.firstHostPort : nextPort + 1 }
        defer { nextPort = nextPort == UInt32.max ? VsockMux.firstHostPort : nextPort + 1 }
        return nextPort
    }

    /// Reads what the guest has credit for, into the bounded stage.
    mutating func readFromHost(_ c: VsockConnection) {
        guard !c.hostEOF, !c.guestShutReceive else { return }
        let room = min(VsockMux.stageLimit - c.staged.count, Int(c.peerCredit) - c.staged.count)
        guard room > 0 else { return }
        var buffer = [UInt8](repeating: 0, count: room)
        let got: Int?
        do { got = try buffer.withUnsafeMutableBytes { b throws(Errno) in try UnixSocket.receive(c.raw, into: b) } }
        catch { reset(c); return }
        guard let n = got else { return }
        if n == 0 { c.hostEOF = true; return }
        c.staged += buffer[0..<n]
        markReady(c)
    }

    /// Hands pending guest bytes to the host socket until it is full.
    mutating func flushToHost(_ c: VsockConnection) {
        guard c.state != .detached else { return } // kept until a client attaches
        while c.pendingCount > 0 {
            let sent: Int
            do {
                sent = try c.pending.withUnsafeBytes { b throws(Errno) in
                    try UnixSocket.send(c.raw, UnsafeRawBufferPointer(rebasing: b[c.pendingStart...]))
                }
            } catch { reset(c); return }
            if sent == 0 { break }
            c.takePending(sent)
        }
        // The guest stops at zero credit: tell it about freed space before its view runs low.
        if c.fwdCnt != c.advertisedFwdCnt, VsockMux.bufAlloc - (c.rxCnt &- c.advertisedFwdCnt) < VsockMux.bufAlloc / 2 {
            queueCreditUpdate(c)
        }
    }

    /// Moves a connection on after its buffers changed: half-closes, full close, SHUTDOWN to the guest.
    mutating func settle(_ c: VsockConnection) {
        if c.state == .detached {
            // Nobody on the host side: a guest that closed both ways only needs its RST.
            if c.guestShutSend && c.guestShutReceive { reset(c) }
            return
        }
        guard c.state == .established else { updateInterest(c); return }
        if c.guestShutSend && c.pendingCount == 0 {
            if c.guestShutReceive { reset(c); return } // both directions done: RST ends it on both sides
            if !c.hostSendShut { UnixSocket.shutdownSending(c.raw); c.hostSendShut = true }
        }
        if c.hostEOF && c.staged.isEmpty && !c.sentShutdown {
            c.sentShutdown = true
            var h = header(c, .shutdown)
            h.flags = VsockHeader.shutdownSend
            control.append(h)
        }
        updateInterest(c)
    }

    mutating func updateInterest(_ c: VsockConnection) {
        guard let context else { return }
        let readable: Bool, writable: Bool
        switch c.state {
        case .awaitingConnect: readable = true; writable = false
        case .connecting: readable = false; writable = false
        case .detached: return
        case .established:
            readable = !c.hostEOF && !c.guestShutReceive && c.staged.count < VsockMux.stageLimit
                && Int(c.peerCredit) > c.staged.count
            writable = c.pendingCount > 0
        }
        guard readable != c.interest.readable || writable != c.interest.writable else { return }
        c.interest = (readable, writable)
        context.events.setInterest(c.raw, readable: readable, writable: writable)
    }

    // MARK: guest tx

    /// Handles the guest's packets; false when it stopped early because replies are backed up or
    /// the host sockets hold `heldLimit` of its bytes already (a host socket taking some, or a
    /// client attaching, runs it again).
    mutating func processTx() -> Bool {
        guard let context else { return true }
        var completed = false
        defer { if completed { interruptIfNeeded(tx: true) } }
        // Counted once, then raised by each packet's size: an upper bound, no scan per packet.
        var held = heldBytes
        do {
            while control.count < VsockMux.controlLimit && held < heldLimit {
                guard let chain = try tx.pop(context.memory) else { return true }
                held += chain.readable.reduce(0) { $0 + Int($1.length) }
                handleGuestPacket(chain, context.memory)
                try tx.push(head: chain.head, written: 0, context.memory)
                completed = true
            }
            return false
        } catch {
            broken(error)
            return true
        }
    }

    mutating func handleGuestPacket(_ chain: DescriptorChain, _ memory: GuestMemory) {
        let readable = chain.readable
        let total = readable.reduce(UInt64(0)) { $0 + UInt64($1.length) }
        guard total >= UInt64(VsockHeader.size), let bytes = gather(readable, skip: 0, count: VsockHeader.size, memory),
              let h = VsockHeader(bytes) else { return } // too short to answer: dropped
        // Only the guest's own CID to the host is routed; anything else is dropped.
        guard h.srcCID == guestCID, h.dstCID == VsockHeader.hostCID else { return }
        let key = Key(hostPort: h.dstPort, guestPort: h.srcPort)
        let c = connections[key]
        guard h.type == VsockHeader.typeStream, let op = h.knownOp, h.length <= VsockMux.maxPayload,
              UInt64(h.length) <= total - UInt64(VsockHeader.size) else {
            if let c { reset(c) } else if h.op != VsockHeader.Op.rst.rawValue { control.append(resetReply(to: h)) }
            return
        }
        guard let c else {
            switch op {
            case .request: openGuestConnection(h)
            case .rst: break
            default: control.append(resetReply(to: h))
            }
            return
        }
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        switch op {
        case .request:
            reset(c)
            return
        case .response:
            guard c.state == .connecting else { reset(c); return }
            c.state = .established
            c.pending += Array("OK \(key.hostPort)\n".utf8)
            c.localPrefix = c.pendingCount
            flushToHost(c)
        case .rw:
            guard c.isOpen, !c.guestShutSend,
                  UInt64(c.unforwarded) + UInt64(h.length) <= UInt64(VsockMux.bufAlloc),
                  let payload = gather(readable, skip: VsockHeader.size, count: Int(h.length), memory) else { reset(c); return }
            c.rxCnt &+= h.length
            c.pending += payload
            flushToHost(c)
        case .creditUpdate:
            break
        case .creditRequest:
            queueCreditUpdate(c)
        case .shutdown:
            if h.flags & VsockHeader.shutdownReceive != 0 {
                c.guestShutReceive = true
                c.staged.removeAll()
            }
            if h.flags & VsockHeader.shutdownSend != 0 { c.guestShutSend = true }
        case .rst:
            close(c)
            return
        }
        guard connections[key] != nil else { return }
        if !c.staged.isEmpty { markReady(c) }
        settle(c)
    }

    /// A guest connection to CID 2 port P: relayed to the Unix socket `path_P`, or refused with RST.
    mutating func openGuestConnection(_ h: VsockHeader) {
        guard let context, let wake, byFD.count < VsockMux.maxConnections,
              let raw = connect(h.dstPort) else {
            control.append(resetReply(to: h))
            return
        }
        let fd = FileDescriptor(owning: raw)
        let key = Key(hostPort: h.dstPort, guestPort: h.srcPort)
        let c = VsockConnection(fd: fd, state: .established, key: key)
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        do { try context.events.watch(raw) { wake(raw) } } catch {
            control.append(resetReply(to: h))
            return
        }
        connections[key] = c
        byFD[raw] = c
        control.append(header(c, .response))
        updateInterest(c)
    }

    // MARK: guest rx

    /// Fills the guest's rx buffers: control packets first, then data round-robin across connections.
    mutating func flushRx() -> Bool {
        guard let context else { return false }
        var sent = false
        defer { if sent { interruptIfNeeded(tx: false) } }
        do {
            while !control.isEmpty || nextDataConnection() != nil {
                guard let chain = try rx.pop(context.memory) else { break }
                let capacity = chain.writable.reduce(0) { $0 + Int($1.length) }
                var written = 0
                if capacity >= VsockHeader.size {
                    written = control.isEmpty ? sendData(into: chain, capacity: capacity, context.memory)
                        : sendControl(into: chain, context.memory)
                }
                try rx.push(head: chain.head, written: UInt32(written), context.memory)
                sent = true
            }
        } catch {
            broken(error)
        }
        return sent
    }

    mutating func sendControl(into chain: DescriptorChain, _ memory: GuestMemory) -> Int {
        var h = control.removeFirst()
        if let c = connections[Key(hostPort: h.srcPort, guestPort: h.dstPort)], h.op != VsockHeader.Op.rst.rawValue {
            h.bufAlloc = VsockMux.bufAlloc
            h.fwdCnt = c.fwdCnt
            c.advertisedFwdCnt = c.fwdCnt
            if h.op == VsockHeader.Op.creditUpdate.rawValue { c.creditUpdateQueued = false }
        }
        return scatter(h.bytes, into: chain.writable, memory)
    }

    mutating func sendData(into chain: DescriptorChain, capacity: Int, _ memory: GuestMemory) -> Int {
        guard let c = nextDataConnection() else { return 0 }
        ready.removeFirst()
        c.inReadyList = false
        let n = min(c.staged.count, Int(c.peerCredit), capacity - VsockHeader.size, Int(VsockMux.maxPayload))
        var h = header(c, .rw)
        h.length = UInt32(n)
        h.bufAlloc = VsockMux.bufAlloc
        h.fwdCnt = c.fwdCnt
        c.advertisedFwdCnt = c.fwdCnt
        let written = scatter(h.bytes + c.staged[0..<n], into: chain.writable, memory)
        c.staged.removeFirst(n)
        c.txCnt &+= UInt32(n)
        if !c.staged.isEmpty { markReady(c) }
        settle(c)
        return written
    }

    /// The connection whose data goes next; drops entries that cannot send now from the list's front.
    mutating func nextDataConnection() -> VsockConnection? {
        while let key = ready.first {
            if let c = connections[key], c.isOpen, !c.staged.isEmpty, c.peerCredit > 0 { return c }
            ready.removeFirst()
            connections[key]?.inReadyList = false
        }
        return nil
    }

    mutating func markReady(_ c: VsockConnection) {
        guard let key = c.key, !c.inReadyList, c.isOpen else { return }
        c.inReadyList = true
        ready.append(key)
    }

    /// Runs tx and rx until neither can make progress.
    mutating func pump() {
        var rounds = 0
        while true {
            let txDone = processTx()
            let sent = flushRx()
            rounds += 1
            if txDone || !sent || rounds > 64 { break }
        }
    }

    // MARK: helpers

    func header(_ c: VsockConnection, _ op: VsockHeader.Op) -> VsockHeader {
        VsockHeader(srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: c.key?.hostPort ?? 0, dstPort: c.key?.guestPort ?? 0,
                    op: op, bufAlloc: VsockMux.bufAlloc, fwdCnt: c.fwdCnt)
    }

    func resetReply(to h: VsockHeader) -> VsockHeader {
        VsockHeader(srcCID: VsockHeader.hostCID, dstCID: guestCID, srcPort: h.dstPort, dstPort: h.srcPort, op: .rst)
    }

    mutating func queueCreditUpdate(_ c: VsockConnection) {
        guard !c.creditUpdateQueued, c.isOpen else { return }
        c.creditUpdateQueued = true
        control.append(header(c, .creditUpdate))
    }

    /// Tells the guest the connection is gone (RST) and closes it.
    mutating func reset(_ c: VsockConnection) {
        if c.key != nil, c.state != .awaitingConnect { control.append(header(c, .rst)) }
        close(c)
    }

    /// Forgets a connection and closes its socket (after unwatching it).
    mutating func close(_ c: VsockConnection) {
        if c.state != .detached {
            context?.events.unwatch(c.raw)
            byFD[c.raw] = nil
        }
        if let key = c.key, connections[key] === c { connections[key] = nil }
    }

    mutating func interruptIfNeeded(tx isTx: Bool) {
        guard let context else { return }
        do {
            let needed = isTx ? try tx.needsInterrupt(context.memory) : try rx.needsInterrupt(context.memory)
            if needed { context.interrupt() }
        } catch {
            broken(error)
        }
    }

    mutating func broken(_ error: VirtqueueError) {
        context?.fail("virtio-vsock \(path): \(error)")
        rx.ready = false
        tx.ready = false
    }

    /// `count` bytes of the readable buffers after `skip`; nil if they hold fewer.
    func gather(_ buffers: [Buffer], skip: Int, count: Int, _ memory: GuestMemory) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var skip = skip
        for b in buffers where out.count < count {
            let length = Int(b.length)
            if skip >= length { skip -= length; continue }
            let n = min(length - skip, count - out.count)
            guard let chunk = try? memory.read(n, at: b.address + UInt64(skip)) else { return nil }
            out += chunk
            skip = 0
        }
        return out.count == count ? out : nil
    }

    /// Writes `bytes` across the writable buffers; returns how many fit.
    func scatter(_ bytes: [UInt8], into buffers: [Buffer], _ memory: GuestMemory) -> Int {
        var offset = 0
        for b in buffers where offset < bytes.count {
            let n = min(Int(b.length), bytes.count - offset)
            guard (try? memory.write(Array(bytes[offset..<offset + n]), at: b.address)) != nil else { return offset }
            offset += n
        }
        return offset
    }
}
