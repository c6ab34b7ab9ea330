import Testing
@testable import AgentProtocol

@Suite struct CreditTests {
    @Test func aSenderNeverExceedsItsWindowAndResumesOnCredit() {
        var window = SendWindow(initial: 100)
        #expect(window.take(upTo: 60) == 60)
        #expect(window.take(upTo: 60) == 40)
        #expect(window.take(upTo: 1) == 0)
        window.grant(10)
        #expect(window.take(upTo: 60) == 10)
        var big = SendWindow()
        #expect(big.take(upTo: Int.max) == Wire.maxPayload)
    }

    @Test func aReceiverRefusesDataBeyondCredit() throws {
        var window = ReceiveWindow(size: 100)
        try window.receive(100, stream: 3)
        #expect(throws: ProtocolError.flowControl(stream: 3)) { try window.receive(1, stream: 3) }
        #expect(window.consume(49) == nil)
        #expect(window.consume(1) == 50)
        try window.receive(50, stream: 3)
        #expect(throws: ProtocolError.flowControl(stream: 3)) { try window.receive(1, stream: 3) }
    }

    /// A sender and receiver wired together move any amount with at most one window in flight.
    @Test func senderAndReceiverMoveTenWindowsWithoutAViolation() throws {
        var send = SendWindow(initial: 1000)
        var receive = ReceiveWindow(size: 1000)
        var moved = 0
        while moved < 10_000 {
            let n = send.take(upTo: 300)
            #expect(n > 0)
            try receive.receive(n, stream: 1)
            if let credit = receive.consume(n) { send.grant(credit) }
            moved += n
        }
        #expect(send.available + receive.consumed == 1000)
    }
}
