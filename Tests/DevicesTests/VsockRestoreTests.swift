import Glibc
import GuestMemory
import LinuxSys
import Testing
@testable import Devices

/// What a restored vsock device tells the guest, and when it lets host clients in again.
@Suite(.serialized) struct VsockRestoreTests {
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
}
