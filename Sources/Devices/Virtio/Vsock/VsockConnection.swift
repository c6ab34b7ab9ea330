import LinuxSys

/// One stream between a guest port and a host Unix socket, with its credit accounting
/// (virtio 1.x, 5.10.6.3). All counters wrap, as the spec's free-running u32 counters do.
final class VsockConnection {
    enum State: Equatable {
        /// A host client connected to the listener; its `CONNECT <port>` line is not complete yet.
        case awaitingConnect
        /// REQUEST sent to the guest; waiting for RESPONSE or RST.
        case connecting
        case established
    }

    struct Key: Hashable {
        let hostPort: UInt32
        let guestPort: UInt32
    }

    let fd: FileDescriptor
    var state: State
    var key: Key?

    // host -> guest
    /// Read from the host socket, not yet sent to the guest. Never more than the guest's credit allowed.
    var staged: [UInt8] = []
    var hostEOF = false
    var sentShutdown = false
    /// Payload bytes sent to the guest.
    var txCnt: UInt32 = 0
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    var inReadyList = false

    // guest -> host
    /// Bytes for the host socket that it has not taken yet; the first `localPrefix` are Kiln's own (the OK line).
    var pending: [UInt8] = []
    var pendingStart = 0
    var localPrefix = 0
    /// Payload bytes received from the guest, and those the host socket has taken.
    var rxCnt: UInt32 = 0
    var fwdCnt: UInt32 = 0
    /// The fwd_cnt the guest last saw from us.
    var advertisedFwdCnt: UInt32 = 0
    var creditUpdateQueued = false
    var guestShutSend = false
    var guestShutReceive = false
    var hostSendShut = false
    /// What the event loop currently wakes us for.
    var interest = (readable: true, writable: false)

    /// Bytes accepted for the handshake line before the client is dropped.
    static let connectLineLimit = 64

    init(fd: consuming FileDescriptor, state: State, key: Key? = nil) {
        self.fd = fd
        self.state = state
        self.key = key
    }

    var raw: Int32 { fd.raw }
    var pendingCount: Int { pending.count - pendingStart }

    /// How many more payload bytes the guest can take now.
    var peerCredit: UInt32 {
        let inFlight = txCnt &- peerFwdCnt
        return inFlight > peerBufAlloc ? 0 : peerBufAlloc - inFlight
    }

    /// Guest payload bytes waiting for the host socket (what counts against our buf_alloc).
    var unforwarded: UInt32 { rxCnt &- fwdCnt }

    func takePending(_ n: Int) {
        let own = min(n, localPrefix)
        localPrefix -= own
        fwdCnt &+= UInt32(n - own)
        pendingStart += n
        if pendingStart == pending.count { pending.removeAll(keepingCapacity: true); pendingStart = 0 }
        else if pendingStart > 65536 && pendingStart * 2 > pending.count { pending.removeFirst(pendingStart); pendingStart = 0 }
    }
}
