import Glibc
import GuestMemory
import LinuxSys
import Testing
@testable import Devices

/// What a restored vsock device tells the guest, and when it lets host clients in again.
@Suite(.serialized) struct VsockRestoreTests {
    /// Without saved connections (a snapshot under another CID, or none kept) the guest is told to reset.
    @Test func restoreSendsTransportResetAndHoldsClientsUntilTheGuestHandledIt() throws {
        let t = try VsockHarness()
        let eventBuffer: UInt64 = 0x80000
        try t.memory.fill(0xAA, count: 8, at: eventBuffer)
        try t.event.post([(eventBuffer, 8, true)], t.memory)
        t.device.restored()
        let used = try t.event.takeUsed(t.memory)
        #expect(used.count == 1 && used.first?.written == 4)
        #expect(try t.memory.read(UInt32.self, at: eventBuffer) == 0) // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET

        // A host client waits in the backlog until the guest refilled the event queue.
        let fd = try UnixSocket.connect(path: t.path).release()
        defer { close(fd) }
        try t.write(fd, "CONNECT 5000\n")
        #expect(try t.received().isEmpty)
        try t.event.post([(eventBuffer, 8, true)], t.memory)
        t.device.process(queue: 2)
        let request = try t.received()
        #expect(request.count == 1 && request.first?.header.knownOp == .request && request.first?.header.dstPort == 5000)
    }

    @Test func liveQueuesCarryTheDevicesProgress() throws {
        let t = try VsockHarness()
        let (fd, _) = try t.hostConnection(guestPort: 5000)
        defer { close(fd) }
        let queues = try #require(t.device.liveQueues())
        #expect(queues.count == 3)
        #expect(queues[0].nextUsed == 1) // the connection request went to the guest on rx
        #expect(queues[1].nextUsed == 1 && queues[1].lastAvailable == 1) // the guest's response, consumed from tx
        #expect(queues[2].nextUsed == 0)
        t.device.reset()
        #expect(t.device.liveQueues() == nil)
    }

    /// A connection with credit state, snapshotted and restored into a new device (a clone):
    /// the guest gets no RST, no REQUEST and no transport reset; the new host client attaches
    /// with `ATTACH <port>`, and its first bytes reach the guest at once, within the credit the
    /// guest had left at the snapshot, and with the saved forward count.
    @Test func snapshottedConnectionResumesWithItsCreditAndNoReset() throws {
        let original = try VsockHarness()
        let (fd, hostPort) = try original.hostConnection(guestPort: 1024)
        defer { close(fd) }
        // The guest offers an 8-byte buffer; the host fills 5 of it and the guest sends 5 bytes.
        try original.send(original.fromGuest(.creditUpdate, guestPort: 1024, hostPort: hostPort, bufAlloc: 8, fwdCnt: 0))
        try original.write(fd, "world")
        #expect(try original.received().map { String(decoding: $0.payload, as: UTF8.self) } == ["world"])
        try original.send(original.fromGuest(.rw, guestPort: 1024, hostPort: hostPort, bufAlloc: 8, fwdCnt: 0, length: 5),
                          payload: Array("hello".utf8))
        original.events.poll()
        #expect(original.read(fd) == "hello")
        let saved = original.device.save()
        #expect(saved.connections.count == 1)
        #expect(saved.connections.first.map { ($0.txCnt, $0.rxCnt, $0.fwdCnt, $0.peerBufAlloc) } ?? (0, 0, 0, 0) == (5, 5, 5, 8))

        let clone = try VsockHarness("clone")
        let eventBuffer: UInt64 = 0x80000
        try clone.event.post([(eventBuffer, 8, true)], clone.memory)
        clone.device.prepareRestore(saved)
        clone.device.restored()
        #expect(try clone.event.takeUsed(clone.memory).isEmpty, "no transport reset")
        #expect(try clone.received().isEmpty, "nothing reaches the guest before a client attaches")
        #expect(clone.device.detachedCount == 1)

        let client = try UnixSocket.connect(path: clone.path).release()
        defer { close(client) }
        try clone.write(client, "ATTACH 1024\npingpong")
        let packets = try clone.received()
        #expect(!packets.contains { $0.header.knownOp == .rst || $0.header.knownOp == .request }, "\(packets.map(\.header))")
        #expect(packets.count == 1)
        let first = try #require(packets.first)
        #expect(first.header.knownOp == .rw && first.header.srcPort == hostPort && first.header.dstPort == 1024)
        #expect(String(decoding: first.payload, as: UTF8.self) == "pin", "only the 3 bytes of credit the guest had left")
        #expect(first.header.fwdCnt == 5, "the forward count goes on from the snapshot")
        clone.events.poll()
        #expect(clone.read(client) == "OK \(hostPort)\n")

        // The guest frees its buffer: the rest follows; its reply reaches the attached client.
        try clone.send(clone.fromGuest(.creditUpdate, guestPort: 1024, hostPort: hostPort, bufAlloc: 8, fwdCnt: 8))
        #expect(try clone.received().map { String(decoding: $0.payload, as: UTF8.self) } == ["gpong"])
        try clone.send(clone.fromGuest(.rw, guestPort: 1024, hostPort: hostPort, bufAlloc: 8, fwdCnt: 13, length: 5),
                       payload: Array("again".utf8))
        clone.events.poll()
        #expect(clone.read(client) == "again")
        #expect(clone.device.detachedCount == 0)

        // The original's connection is untouched by its clone.
        try original.write(fd, "x")
        #expect(try original.received().map { String(decoding: $0.payload, as: UTF8.self) } == ["x"])
        #expect(original.failureLog.reasons.withLock { $0 }.isEmpty && clone.failureLog.reasons.withLock { $0 }.isEmpty)
    }

    /// Guest bytes the old host socket had not taken, and those the guest sends while nobody is
    /// attached, reach the client that attaches, in order. A second ATTACH finds nothing kept and
    /// is closed; a guest-initiated connection (its host peer belonged to the original) is reset.
    @Test func queuedGuestBytesReachTheAttachedClientAndGuestConnectionsAreReset() throws {
        let t = try VsockHarness()
        let kept = VsockSavedState.Connection(hostPort: 1024, guestPort: 1024, hostInitiated: true, txCnt: 0, rxCnt: 6, fwdCnt: 0,
                                              advertisedFwdCnt: 0, peerBufAlloc: 4096, peerFwdCnt: 0, flags: [], toGuest: [],
                                              toHost: Array("queued".utf8))
        var outgoing = kept
        outgoing.hostPort = 5000; outgoing.guestPort = 40000; outgoing.hostInitiated = false; outgoing.toHost = []
        t.device.prepareRestore(VsockSavedState(guestCID: 3, nextPort: 1025, connections: [kept, outgoing], control: []))
        t.device.restored()
        let reset = try t.received()
        #expect(reset.count == 1 && reset.first?.header.knownOp == .rst && reset.first?.header.srcPort == 5000
                && reset.first?.header.dstPort == 40000)
        try t.send(t.fromGuest(.rw, guestPort: 1024, hostPort: 1024, length: 4), payload: Array("more".utf8))
        #expect(try t.received().isEmpty, "kept for the client that attaches, no RST")
        let a = try UnixSocket.connect(path: t.path).release()
        defer { close(a) }
        try t.write(a, "ATTACH 1024\n")
        t.events.poll()
        #expect(t.read(a) == "OK 1024\nqueuedmore")
        let b = try UnixSocket.connect(path: t.path).release()
        defer { close(b) }
        try t.write(b, "ATTACH 1024\n")
        t.events.poll()
        #expect(t.read(b) == "<EOF>")
        #expect(try t.received().isEmpty)
    }
}
