import Synchronization

/// A 16550A UART (COM1 on a PC). Guest output goes to `output`; host input is queued with
/// `enqueueInput` and sits in the 16-byte receive FIFO only while the guest driver has
/// receive interrupts enabled. Input typed before the driver is ready, or while it resets
/// and flushes the port, waits in the queue instead of being lost.
public final class Serial: PortDevice {
    public static let com1Base: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    public static let portCount: UInt16 = 8
    static let fifoSize = 16
    /// Host bytes held back while the guest is not reading (backpressure beyond this).
    public static let inputCapacity = 1 << 20

    // Register offsets.
    static let rbrTHR: UInt16 = 0, ier: UInt16 = 1, iirFCR: UInt16 = 2, lcr: UInt16 = 3
    static let mcr: UInt16 = 4, lsr: UInt16 = 5, msr: UInt16 = 6, scr: UInt16 = 7

    // Bits.
    static let ierRxData: UInt8 = 0x01, ierTHRE: UInt8 = 0x02
    static let iirNone: UInt8 = 0x01, iirTHRE: UInt8 = 0x02, iirRxData: UInt8 = 0x04, iirFIFOs: UInt8 = 0xC0
    static let fcrEnable: UInt8 = 0x01, fcrClearRx: UInt8 = 0x02
    static let lcrDLAB: UInt8 = 0x80
    static let lsrDataReady: UInt8 = 0x01, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40
    static let mcrLoop: UInt8 = 0x10

    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0x03 // 8N1
        var mcr: UInt8 = 0x08 // OUT2
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C // 9600 baud
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var thrEmptyPending = false
        var rx: [UInt8] = []
        var rxHead = 0
        var pending: [UInt8] = []
        var pendingHead = 0

        var rxCount: Int { rx.count - rxHead }
        var pendingCount: Int { pending.count - pendingHead }

        var interruptID: UInt8 {
            if ier & ierRxData != 0 && rxCount > 0 { return iirRxData }
            if ier & ierTHRE != 0 && thrEmptyPending { return iirTHRE }
            return iirNone
        }

        /// Moves host input into the FIFO while the guest is listening; true if the FIFO gained data.
        mutating func refill() -> Bool {
            guard ier & ierRxData != 0 else { return false }
            let capacity = fifoEnabled ? fifoSize : 1
            var moved = false
            while rxCount < capacity && pendingCount > 0 {
                rx.append(pending[pendingHead])
                pendingHead += 1
                moved = true
            }
            if pendingHead > 4096 && pendingHead * 2 > pending.count {
                pending.removeFirst(pendingHead); pendingHead = 0
            }
            if rxHead > 64 { rx.removeFirst(rxHead); rxHead = 0 }
            return moved
        }

        /// Puts host bytes the guest has not read back at the head of the queue: the guest
        /// stopped listening or flushed its FIFO (as Linux does while it opens the port).
        mutating func unread() {
            guard rxCount > 0, mcr & mcrLoop == 0 else { rx.removeAll(keepingCapacity: true); rxHead = 0; return }
            pending.replaceSubrange(0..<pendingHead, with: rx[rxHead...])
            pendingHead = 0
            rx.removeAll(keepingCapacity: true)
            rxHead = 0
        }
    }

    private let state = Mutex(State())
    private let output: @Sendable (UInt8) -> Void
    private let interrupt: @Sendable () -> Void

    /// `output` receives each byte the guest transmits; `interrupt` pulses the UART's IRQ line.
    public init(output: @escaping @Sendable (UInt8) -> Void, interrupt: @escaping @Sendable () -> Void) {
        self.output = output
        self.interrupt = interrupt
    }

    /// Queues host bytes for the guest; returns how many were accepted (fewer when the queue is full).
    @discardableResult
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        let (accepted, raise) = state.withLock { s -> (Int, Bool) in
            let room = max(0, Serial.inputCapacity - s.pendingCount)
            let n = min(room, bytes.count)
            s.pending.append(contentsOf: bytes.prefix(n))
            let wasEmpty = s.rxCount == 0
            return (n, s.refill() && wasEmpty)
        }
        if raise { interrupt() }
        return accepted
    }

    /// The UART registers and the bytes in its receive FIFO, as a snapshot records them.
    /// Host input not yet in the FIFO belongs to the old console and is not saved.
    public struct SavedState: Sendable, Equatable {
        public var ier: UInt8, lcr: UInt8, mcr: UInt8, scr: UInt8, dll: UInt8, dlm: UInt8
        public var fifoEnabled: Bool, thrEmptyPending: Bool
        public var rx: [UInt8]
        public init(ier: UInt8, lcr: UInt8, mcr: UInt8, scr: UInt8, dll: UInt8, dlm: UInt8,
                    fifoEnabled: Bool, thrEmptyPending: Bool, rx: [UInt8]) {
            self.ier = ier; self.lcr = lcr; self.mcr = mcr; self.scr = scr; self.dll = dll; self.dlm = dlm
            self.fifoEnabled = fifoEnabled; self.thrEmptyPending = thrEmptyPending; self.rx = rx
        }
    }

    public func save() -> SavedState {
        state.withLock { s in
            SavedState(ier: s.ier, lcr: s.lcr, mcr: s.mcr, scr: s.scr, dll: s.dll, dlm: s.dlm,
                       fifoEnabled: s.fifoEnabled, thrEmptyPending: s.thrEmptyPending, rx: Array(s.rx[s.rxHead...]))
        }
    }

    public func restore(_ saved: SavedState) {
        state.withLock { s in
            s = State()
            s.ier = saved.ier; s.lcr = saved.lcr; s.mcr = saved.mcr; s.scr = saved.scr; s.dll = saved.dll; s.dlm = saved.dlm
            s.fifoEnabled = saved.fifoEnabled; s.thrEmptyPending = saved.thrEmptyPending; s.rx = saved.rx
        }
    }

    /// Bytes queued by the host that the guest has not read yet.
    public var unreadInput: Int { state.withLock { $0.rxCount + $0.pendingCount } }

    public func read(offset: UInt16, into data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        var raise = false
        let value: UInt8 = state.withLock { s in
            switch offset {
            case Serial.rbrTHR where s.lcr & Serial.lcrDLAB != 0: return s.dll
            case Serial.rbrTHR:
                guard s.rxCount > 0 else { return 0 }
                let byte = s.rx[s.rxHead]
                s.rxHead += 1
                if s.rxCount == 0 { raise = s.refill() }
                return byte
            case Serial.ier where s.lcr & Serial.lcrDLAB != 0: return s.dlm
            case Serial.ier: return s.ier
            case Serial.iirFCR:
                let id = s.interruptID
                if id == Serial.iirTHRE { s.thrEmptyPending = false } // reading IIR acknowledges THRE
                return id | (s.fifoEnabled ? Serial.iirFIFOs : 0)
            case Serial.lcr: return s.lcr
            case Serial.mcr: return s.mcr
            case Serial.lsr: return Serial.lsrTHRE | Serial.lsrTEMT | (s.rxCount > 0 ? Serial.lsrDataReady : 0)
            case Serial.msr:
                if s.mcr & Serial.mcrLoop != 0 {
                    // Loopback: CTS<-RTS, DSR<-DTR, RI<-OUT1, DCD<-OUT2.
                    let m = s.mcr
                    return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                }
                return 0xB0 // CTS, DSR, DCD: a cable is attached and ready
            case Serial.scr: return s.scr
            default: return 0xFF
            }
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
        if raise { interrupt() }
    }

    public func write(offset: UInt16, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var transmit: UInt8?
        let raise: Bool = state.withLock { s in
            switch offset {
            case Serial.rbrTHR where s.lcr & Serial.lcrDLAB != 0: s.dll = value
            case Serial.rbrTHR:
                if s.mcr & Serial.mcrLoop != 0 {
                    s.rx.append(value)
                    if s.ier & Serial.ierRxData != 0 { return true }
                } else {
                    transmit = value
                }
                // The byte leaves at once, so the holding register is empty again.
                s.thrEmptyPending = true
                return s.ier & Serial.ierTHRE != 0
            case Serial.ier where s.lcr & Serial.lcrDLAB != 0: s.dlm = value
            case Serial.ier:
                let enabled = value & ~s.ier
                if s.ier & Serial.ierRxData != 0 && value & Serial.ierRxData == 0 { s.unread() }
                s.ier = value & 0x0F
                if enabled & Serial.ierTHRE != 0 { s.thrEmptyPending = true }
                let gained = s.refill()
                return (enabled & Serial.ierTHRE != 0) || gained || (enabled & Serial.ierRxData != 0 && s.rxCount > 0)
            case Serial.iirFCR:
                s.fifoEnabled = value & Serial.fcrEnable != 0
                if value & Serial.fcrClearRx != 0 { s.unread() }
            case Serial.lcr: s.lcr = value
            case Serial.mcr: s.mcr = value & 0x1F
            case Serial.scr: s.scr = value
            default: break
            }
            return false
        }
        if let transmit { output(transmit) }
        if raise { interrupt() }
    }
}
