import Glibc
import GuestMemory
import LinuxSys
import Synchronization
import Testing
@testable import Devices

/// An event loop stand-in: `poll` runs the handlers of fds that are ready for what they asked.
final class FakeEvents: EventRegistry {
    struct Watch { let handler: @Sendable () -> Void; var readable = true; var writable = false }
    let watches = Mutex<[Int32: Watch]>([:])

    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) {
        watches.withLock { $0[fd] = Watch(handler: handler) }
    }
    func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {
        watches.withLock { $0[fd]?.readable = readable; $0[fd]?.writable = writable }
    }
    func unwatch(_ fd: Int32) { _ = watches.withLock { $0.removeValue(forKey: fd) } }

    /// Serves ready fds until none is ready (or `rounds` pass).
    func poll(rounds: Int = 50) {
        for _ in 0..<rounds {
            let list = watches.withLock { $0.filter { $0.value.readable || $0.value.writable } }
            var fds = list.map { pollfd(fd: $0.key, events: Int16(($0.value.readable ? POLLIN : 0) | ($0.value.writable ? POLLOUT : 0)), revents: 0) }
            guard Glibc.poll(&fds, nfds_t(fds.count), 0) > 0 else { return }
            for p in fds where p.revents != 0 { list[p.fd]?.handler() }
        }
    }
}

/// The driver's half of a split ring in a fake guest memory.
struct DriverRing {
    let base: UInt64
    let size: UInt16 = 16
    var nextDescriptor: UInt16 = 0
    var availIndex: UInt16 = 0
    var usedSeen: UInt16 = 0
    var descriptors: UInt64 { base }
    var avail: UInt64 { base + 0x100 }
    var used: UInt64 { base + 0x200 }

    var queue: Virtqueue {
        var q = Virtqueue()
        q.size = size; q.descriptorTable = descriptors; q.availableRing = avail; q.usedRing = used; q.ready = true
        return q
    }

    /// Makes a chain of (address, length, writable) buffers available.
    mutating func post(_ buffers: [(UInt64, UInt32, Bool)], _ memory: GuestMemory) throws {
        let head = nextDescriptor
        for (i, b) in buffers.enumerated() {
            let index = (head + UInt16(i)) % size
            let d = descriptors + 16 * UInt64(index)
            let last = i == buffers.count - 1
            try memory.write(b.0, at: d)
            try memory.write(b.1, at: d + 8)
            try memory.write(UInt16((last ? 0 : 1) | (b.2 ? 2 : 0)), at: d + 12)
            try memory.write((index + 1) % size, at: d + 14)
        }
        nextDescriptor = (head + UInt16(buffers.count)) % size
        try memory.write(head, at: avail + 4 + 2 * UInt64(availIndex % size))
        availIndex &+= 1
        try memory.write(availIndex, at: avail + 2)
    }

    /// Used elements (head, written) not seen before.
    mutating func takeUsed(_ memory: GuestMemory) throws -> [(head: UInt32, written: UInt32)] {
        let index: UInt16 = try memory.read(at: used + 2)
        var out: [(UInt32, UInt32)] = []
        while usedSeen != index {
            let slot = used + 4 + 8 * UInt64(usedSeen % size)
            out.append((try memory.read(at: slot), try memory.read(at: slot + 4)))
            usedSeen &+= 1
        }
        return out
    }
}

final class FailureLog: Sendable { let reasons = Mutex<[String]>([]) }

/// A VirtioVsock with a fake guest driving its rx and tx queues.
final class VsockHarness {
    static let rxData: UInt64 = 0x10000, txData: UInt64 = 0x40000
    let memory: GuestMemory
    let events = FakeEvents()
    let device: VirtioVsock
    let path: String
    let failureLog = FailureLog()
    var rx = DriverRing(base: 0x1000), tx = DriverRing(base: 0x2000), event = DriverRing(base: 0x3000)
    var rxBuffersPosted = 0
    var txSlot: UInt64 = 0

    init(_ name: String = #function, heldLimit: Int = VirtioVsock.heldLimit) throws {
        path = "/tmp/kiln-vsock-test-\(getpid())-\(name.prefix(20).filter { $0.isLetter })"
        unlink(path)
        memory = try GuestMemory(layout: [(0, 1 << 20)])
        device = try VirtioVsock(path: path, guestCID: 3, heldLimit: heldLimit)
        let log = failureLog
        device.activate(queues: [rx.queue, tx.queue, event.queue], context: VirtioContext(
            memory: memory, features: device.features, interrupt: {},
            fail: { reason in log.reasons.withLock { $0.append(reason) } }, events: events))
        try postRxBuffers(8)
    }

    deinit { device.shutdown() }

    /// Gives the device `count` rx buffers of 4 KiB (as Linux's driver does).
    func postRxBuffers(_ count: Int) throws {
        for _ in 0..<count {
            let address = VsockHarness.rxData + UInt64(rxBuffersPosted % 16) * 0x1000
            try rx.post([(address, 0x1000, true)], memory)
            rxBuffersPosted += 1
        }
        device.process(queue: 0)
    }

    /// The guest sends one packet: the header and payload in separate buffers, as Linux does.
    /// Returns how many of the guest's tx buffers came back (0: the device has not taken it yet).
    @discardableResult
    func send(_ h: VsockHeader, payload: [UInt8] = []) throws -> Int {
        let address = VsockHarness.txData + (txSlot % 8) * 0x8000
        txSlot += 1
        try memory.write(h.bytes, at: address)
        var chain: [(UInt64, UInt32, Bool)] = [(address, UInt32(VsockHeader.size), false)]
        if !payload.isEmpty {
            try memory.write(payload, at: address + 0x100)
            chain.append((address + 0x100, UInt32(payload.count), false))
        }
        try tx.post(chain, memory)
        device.process(queue: 1)
        return try tx.takeUsed(memory).count
    }

    func fromGuest(_ op: VsockHeader.Op, guestPort: UInt32, hostPort: UInt32, flags: UInt32 = 0,
                   bufAlloc: UInt32 = 256 << 10, fwdCnt: UInt32 = 0, length: Int = 0) -> VsockHeader {
        VsockHeader(srcCID: 3, dstCID: 2, srcPort: guestPort, dstPort: hostPort, length: UInt32(length), op: op,
                    flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }

    /// Packets the device put on the rx queue since the last call (reposting their buffers).
    func received() throws -> [(header: VsockHeader, payload: [UInt8])] {
        events.poll()
        var out: [(VsockHeader, [UInt8])] = []
        for used in try rx.takeUsed(memory) {
            let address = try memory.read(UInt64.self, at: rx.descriptors + 16 * UInt64(used.head))
            let bytes = try memory.read(Int(used.written), at: address)
            guard let h = VsockHeader(bytes) else { Issue.record("short rx packet"); continue }
            out.append((h, Array(bytes[VsockHeader.size...])))
        }
        if !out.isEmpty { try postRxBuffers(out.count) }
        return out
    }

    /// A host client that has done the CONNECT handshake with a guest listening on `guestPort`.
    func hostConnection(guestPort: UInt32) throws -> (fd: Int32, hostPort: UInt32) {
        let fd = try UnixSocket.connect(path: path).release()
        try write(fd, "CONNECT \(guestPort)\n")
        let request = try received()
        #expect(request.count == 1)
        let h = try #require(request.first?.header)
        #expect(h.knownOp == .request && h.srcCID == 2 && h.dstCID == 3 && h.dstPort == guestPort && h.srcPort >= 1024)
        try send(fromGuest(.response, guestPort: guestPort, hostPort: h.srcPort))
        events.poll()
        #expect(read(fd) == "OK \(h.srcPort)\n")
        return (fd, h.srcPort)
    }

    func write(_ fd: Int32, _ text: String) throws {
        _ = try Array(text.utf8).withUnsafeBytes { b throws(Errno) in try UnixSocket.send(fd, b) }
    }

    /// Whatever the socket holds now ("<EOF>" at end of stream).
    func read(_ fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let n = buffer.withUnsafeMutableBytes { (try? UnixSocket.receive(fd, into: $0)) ?? nil }
        guard let n else { return "" }
        return n == 0 ? "<EOF>" : String(decoding: buffer[0..<n], as: UTF8.self)
    }
}

@Suite(.serialized) struct VsockTests {
    @Test func headerIs44LittleEndianBytes() {
        let h = VsockHeader(srcCID: 2, dstCID: 3, srcPort: 0x0102_0304, dstPort: 5, length: 6, op: .rw, flags: 7, bufAlloc: 8, fwdCnt: 9)
        #expect(h.bytes.count == 44)
        #expect(Array(h.bytes[16..<20]) == [4, 3, 2, 1])
        #expect(VsockHeader(h.bytes) == h)
        #expect(VsockHeader(Array(h.bytes.prefix(43))) == nil)
    }

    @Test func hostConnectRelaysBytesBothWays() throws {
        let t = try VsockHarness()
        let (fd, hostPort) = try t.hostConnection(guestPort: 5000)
        defer { close(fd) }
        try t.send(t.fromGuest(.rw, guestPort: 5000, hostPort: hostPort, length: 5), payload: Array("hello".utf8))
        t.events.poll()
        #expect(t.read(fd) == "hello")
        try t.write(fd, "world")
        let packets = try t.received()
        #expect(packets.count == 1)
        #expect(packets.first?.header.knownOp == .rw && packets.first?.header.length == 5)
        #expect(packets.first.map { String(decoding: $0.payload, as: UTF8.self) } == "world")
        #expect(packets.first?.header.fwdCnt == 5, "our forward count covers the 5 bytes the host took")
        #expect(t.failureLog.reasons.withLock { $0 }.isEmpty)
    }

    @Test func guestRefusalClosesTheHostClient() throws {
        let t = try VsockHarness()
        let fd = try UnixSocket.connect(path: t.path).release()
        defer { close(fd) }
        try t.write(fd, "CONNECT 7\n")
        let request = try #require(try t.received().first?.header)
        try t.send(t.fromGuest(.rst, guestPort: 7, hostPort: request.srcPort))
        t.events.poll()
        #expect(t.read(fd) == "<EOF>")
        #expect(t.device.connectionCount == 0)
    }

    @Test func malformedConnectLineIsDropped() throws {
        let t = try VsockHarness()
        let fd = try UnixSocket.connect(path: t.path).release()
        defer { close(fd) }
        try t.write(fd, "HELLO there\n")
        #expect(try t.received().isEmpty)
        #expect(t.read(fd) == "<EOF>")
    }

    @Test func packetsForUnknownConnectionsGetRST() throws {
        let t = try VsockHarness()
        try t.send(t.fromGuest(.rw, guestPort: 40, hostPort: 41, length: 3), payload: [1, 2, 3])
        let reply = try t.received()
        #expect(reply.count == 1)
        let h = try #require(reply.first?.header)
        #expect(h.knownOp == .rst && h.srcPort == 41 && h.dstPort == 40 && h.dstCID == 3)
        // An RST is never answered with an RST.
        try t.send(t.fromGuest(.rst, guestPort: 40, hostPort: 41))
        #expect(try t.received().isEmpty)
    }

    @Test func guestConnectGoesToPathUnderscorePort() throws {
        let t = try VsockHarness()
        let listener = try UnixSocket.listen(path: "\(t.path)_6000")
        defer { unlink("\(t.path)_6000") }
        try t.send(t.fromGuest(.request, guestPort: 33333, hostPort: 6000))
        let reply = try t.received()
        #expect(reply.first?.header.knownOp == .response && reply.first?.header.dstPort == 33333)
        guard let accepted = try UnixSocket.accept(listener.raw) else { Issue.record("nothing reached PATH_6000"); return }
        try t.send(t.fromGuest(.rw, guestPort: 33333, hostPort: 6000, length: 2), payload: Array("hi".utf8))
        t.events.poll()
        #expect(t.read(accepted.raw) == "hi")

        // Nothing at PATH_6001: refused.
        try t.send(t.fromGuest(.request, guestPort: 33334, hostPort: 6001))
        #expect(try t.received().first?.header.knownOp == .rst)
    }

    @Test func shutdownsHalfCloseAndFullShutdownEndsWithRST() throws {
        let t = try VsockHarness()
        let (fd, hostPort) = try t.hostConnection(guestPort: 80)
        defer { close(fd) }
        // The host closes its sending side: the guest gets SHUTDOWN(SEND).
        Glibc.shutdown(fd, Int32(SHUT_WR))
        let shutdown = try t.received()
        #expect(shutdown.first?.header.knownOp == .shutdown && shutdown.first?.header.flags == VsockHeader.shutdownSend)
        // The guest can still send; then it closes both ways and Kiln answers RST and closes the client.
        try t.send(t.fromGuest(.rw, guestPort: 80, hostPort: hostPort, length: 3), payload: Array("bye".utf8))
        try t.send(t.fromGuest(.shutdown, guestPort: 80, hostPort: hostPort, flags: 3))
        let end = try t.received()
        #expect(end.first?.header.knownOp == .rst)
        #expect(t.read(fd) == "bye")
        #expect(t.read(fd) == "<EOF>")
        #expect(t.device.connectionCount == 0)
    }

    @Test func hostDataNeverExceedsTheGuestsCredit() throws {
        let t = try VsockHarness()
        let fd = try UnixSocket.connect(path: t.path).release()
        defer { close(fd) }
        try t.write(fd, "CONNECT 90\n")
        let request = try #require(try t.received().first?.header)
        try t.send(t.fromGuest(.response, guestPort: 90, hostPort: request.srcPort, bufAlloc: 100))
        t.events.poll()
        #expect(t.read(fd) == "OK \(request.srcPort)\n")
        try t.write(fd, String(repeating: "x", count: 1000))
        let first = try t.received()
        #expect(first.reduce(0) { $0 + $1.payload.count } == 100)
        #expect(try t.received().isEmpty, "no credit left: nothing more until the guest frees space")
        try t.send(t.fromGuest(.creditUpdate, guestPort: 90, hostPort: request.srcPort, bufAlloc: 100, fwdCnt: 100))
        #expect(try t.received().reduce(0) { $0 + $1.payload.count } == 100)
    }

    @Test func guestAskingForCreditGetsAnUpdateAndOverrunIsReset() throws {
        let t = try VsockHarness()
        let (fd, hostPort) = try t.hostConnection(guestPort: 91)
        defer { close(fd) }
        try t.send(t.fromGuest(.creditRequest, guestPort: 91, hostPort: hostPort))
        let update = try t.received()
        #expect(update.first?.header.knownOp == .creditUpdate && update.first?.header.bufAlloc == VsockMux.bufAlloc)
        // Fill the host socket so nothing drains, then send past the advertised buffer.
        var sent = 0
        let chunk = [UInt8](repeating: 7, count: 0x4000)
        while sent <= Int(VsockMux.bufAlloc) + 0x20_0000 {
            try t.send(t.fromGuest(.rw, guestPort: 91, hostPort: hostPort, length: chunk.count), payload: chunk)
            sent += chunk.count
            if t.device.connectionCount == 0 { break }
        }
        #expect(t.device.connectionCount == 0, "a guest that ignores our credit is reset")
        #expect(try t.received().contains { $0.header.knownOp == .rst })
    }

    @Test func malformedPacketsAreDroppedOrReset() throws {
        let t = try VsockHarness()
        let (fd, hostPort) = try t.hostConnection(guestPort: 92)
        defer { close(fd) }
        // Too short for a header: dropped, the buffer is still returned.
        try t.memory.write([UInt8](repeating: 0, count: 10), at: VsockHarness.txData)
        try t.tx.post([(VsockHarness.txData, 10, false)], t.memory)
        t.device.process(queue: 1)
        #expect(try t.tx.takeUsed(t.memory).count == 1)
        #expect(try t.received().isEmpty)
        // A length beyond the buffers: the connection is reset.
        try t.send(t.fromGuest(.rw, guestPort: 92, hostPort: hostPort, length: 4000), payload: [1, 2, 3])
        #expect(try t.received().first?.header.knownOp == .rst)
        #expect(t.device.connectionCount == 0)
        // A huge length on an unknown connection: answered with RST, nothing read.
        try t.send(t.fromGuest(.rw, guestPort: 93, hostPort: 5, length: Int(UInt32.max)))
        #expect(try t.received().first?.header.knownOp == .rst)
        // A packet from another CID is not ours to answer.
        var spoofed = t.fromGuest(.request, guestPort: 1, hostPort: 2)
        spoofed.srcCID = 9
        try t.send(spoofed)
        #expect(try t.received().isEmpty)
        // A buffer outside guest memory breaks the queue, not Kiln.
        try t.tx.post([(0xFFFF_0000, 44, false)], t.memory)
        t.device.process(queue: 1)
        #expect(t.failureLog.reasons.withLock { $0.count } == 1)
    }

    @Test func aSlowReaderDoesNotStallOtherConnections() throws {
        let t = try VsockHarness()
        let (slow, slowPort) = try t.hostConnection(guestPort: 94)
        let (fast, fastPort) = try t.hostConnection(guestPort: 95)
        defer { close(slow); close(fast) }
        // The slow host client never reads: fill it until Kiln holds a full buffer for it.
        let chunk = [UInt8](repeating: 1, count: 0x4000)
        for _ in 0..<64 where t.device.connectionCount == 2 {
            try t.send(t.fromGuest(.rw, guestPort: 94, hostPort: slowPort, length: chunk.count), payload: chunk)
        }
        try t.send(t.fromGuest(.rw, guestPort: 95, hostPort: fastPort, length: 4), payload: Array("fast".utf8))
        t.events.poll()
        #expect(t.read(fast) == "fast")
        try t.write(fast, "back")
        #expect(try t.received().contains { $0.payload == Array("back".utf8) })
    }

    /// Many host readers that never read: the guest's bytes held for them all stop at the device's
    /// limit (its tx queue waits; no connection is reset for it), instead of 256 KiB a connection
    /// times 1024 connections; one reader draining lets the guest go on.
    @Test func bytesHeldForSlowReadersStopAtTheLimitAndTheGuestWaits() throws {
        let limit = 1 << 20
        let t = try VsockHarness(heldLimit: limit)
        let listener = try UnixSocket.listen(path: "\(t.path)_7000")
        defer { unlink("\(t.path)_7000") }
        var readers: [Int32] = []
        defer { for fd in readers { close(fd) } }
        for port in UInt32(40000)..<40008 {
            try t.send(t.fromGuest(.request, guestPort: port, hostPort: 7000))
            #expect(try t.received().first?.header.knownOp == .response)
            guard let accepted = try UnixSocket.accept(listener.raw) else { Issue.record("nothing reached PATH_7000"); return }
            readers.append(accepted.release())
        }
        let chunk = [UInt8](repeating: 9, count: 0x4000)
        var stalled = false, sent = 0
        outer: for _ in 0..<64 {
            for port in UInt32(40000)..<40008 {
                if try t.send(t.fromGuest(.rw, guestPort: port, hostPort: 7000, length: chunk.count), payload: chunk) == 0 {
                    stalled = true
                    break outer
                }
                sent += chunk.count
            }
        }
        #expect(stalled, "the guest sent \(sent) bytes to readers that never read without waiting")
        #expect(t.device.guestBytesHeld >= limit && t.device.guestBytesHeld <= limit + chunk.count, "\(t.device.guestBytesHeld)")
        #expect(t.device.connectionCount == 8, "waiting is not a reset")

        // One reader takes everything it has: the waiting packet goes through.
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var drained = 0
        for _ in 0..<20 {
            t.events.poll()
            while let n = buffer.withUnsafeMutableBytes({ (try? UnixSocket.receive(readers[0], into: $0)) ?? nil }), n > 0 { drained += n }
        }
        #expect(drained > 0)
        #expect(try t.tx.takeUsed(t.memory).count == 1, "the guest's waiting packet was taken once a reader drained")
        #expect(t.device.connectionCount == 8)
    }

    @Test func socketFileIsRemovedAtShutdown() throws {
        let t = try VsockHarness()
        #expect(access(t.path, F_OK) == 0)
        t.device.shutdown()
        #expect(access(t.path, F_OK) != 0)
    }
}
