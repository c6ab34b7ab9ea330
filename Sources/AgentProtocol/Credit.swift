/// The sending end of one channel's flow-control window (docs/agent-protocol.md, "Flow control").
public struct SendWindow: Equatable, Sendable {
    /// Bytes the peer has allowed and this side has not yet sent.
    public private(set) var available: UInt64

    public init(initial: UInt32 = Wire.initialWindow) {
        available = UInt64(initial)
    }

    /// Takes up to `wanted` bytes of credit for a data frame; 0 means wait for a Credit frame.
    public mutating func take(upTo wanted: Int) -> Int {
        let n = Int(min(UInt64(max(wanted, 0)), available, UInt64(Wire.maxPayload)))
        available -= UInt64(n)
        return n
    }

    /// The peer sent Credit.
    public mutating func grant(_ bytes: UInt32) {
        available += UInt64(bytes)
    }
}

/// The receiving end of one channel's window: checks that the peer stays within its credit and
/// says when to return credit.
public struct ReceiveWindow: Equatable, Sendable {
    public let size: UInt32
    /// Credit the peer still holds.
    public private(set) var outstanding: UInt64
    /// Bytes handed to the consumer and not yet returned to the peer as credit.
    public private(set) var consumed: UInt64 = 0

    public init(size: UInt32 = Wire.initialWindow) {
        self.size = size
        outstanding = UInt64(size)
    }

    /// A data frame of `count` bytes arrived on `stream`.
    public mutating func receive(_ count: Int, stream: UInt32) throws(ProtocolError) {
        guard UInt64(count) <= outstanding else { throw .flowControl(stream: stream) }
        outstanding -= UInt64(count)
    }

    /// The consumer took `count` bytes. Returns the credit to send once half the window is
    /// consumed, so that Credit frames stay rare and the peer never stalls on a full window.
    public mutating func consume(_ count: Int) -> UInt32? {
        consumed += UInt64(count)
        guard consumed >= UInt64(size / 2) else { return nil }
        let credit = UInt32(min(consumed, UInt64(UInt32.max)))
        consumed -= UInt64(credit)
        outstanding += UInt64(credit)
        return credit
    }
}
