import Synchronization
import Testing
@testable import Devices

/// A UART with its output and interrupts recorded.
final class Recorder: Sendable {
    let output = Mutex<[UInt8]>([])
    let interrupts = Atomic<Int>(0)
}

final class SerialProbe: Sendable {
    let recorder = Recorder()
    let serial: Serial

    init() {
        let r = recorder
        serial = Serial(output: { b in r.output.withLock { $0.append(b) } },
                        interrupt: { r.interrupts.add(1, ordering: .relaxed) })
    }

    func out(_ offset: UInt16, _ value: UInt8) {
        withUnsafeBytes(of: value) { serial.write(offset: offset, from: $0) }
    }

    func inb(_ offset: UInt16) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { serial.read(offset: offset, into: $0) }
        return v
    }

    var irqs: Int { recorder.interrupts.load(ordering: .relaxed) }
    var printed: String { String(decoding: recorder.output.withLock { $0 }, as: UTF8.self) }

    /// Drains the receive FIFO the way Linux's interrupt handler does (while LSR says data ready).
    func drain() -> [UInt8] {
        var got: [UInt8] = []
        while inb(5) & 0x01 != 0 { got.append(inb(0)) }
        return got
    }
}

@Suite struct SerialTests {
    @Test func transmittedBytesReachTheHost() {
        let p = SerialProbe()
        for b in "hi\n".utf8 { p.out(0, b) }
        #expect(p.printed == "hi\n")
        #expect(p.inb(5) & 0x60 == 0x60, "transmitter always empty")
    }

    @Test func divisorLatchShadowsDataRegisters() {
        let p = SerialProbe()
        p.out(3, 0x80) // DLAB
        p.out(0, 0x01)
        p.out(1, 0x02)
        #expect(p.inb(0) == 0x01 && p.inb(1) == 0x02)
        p.out(3, 0x03)
        p.out(0, UInt8(ascii: "x"))
        #expect(p.printed == "x", "with DLAB clear, offset 0 transmits again")
    }

    @Test func thrEmptyInterruptWhenEnabledAndAcknowledgedByIIR() {
        let p = SerialProbe()
        #expect(p.inb(2) & 0x0F == 0x01, "no interrupt pending")
        p.out(1, 0x02) // ETBEI
        #expect(p.irqs == 1)
        #expect(p.inb(2) & 0x0F == 0x02, "THR empty pending")
        #expect(p.inb(2) & 0x0F == 0x01, "reading IIR acknowledged it")
        p.out(0, 0x41)
        #expect(p.irqs == 2, "each transmitted byte empties the THR again")
    }

    @Test func inputWaitsUntilTheGuestEnablesReceiveInterrupts() {
        let p = SerialProbe()
        p.serial.enqueueInput(Array("ls\n".utf8))
        #expect(p.inb(5) & 0x01 == 0, "not delivered while the driver is not listening")
        #expect(p.irqs == 0)
        p.out(2, 0x01) // FIFO on
        p.out(1, 0x01) // ERBFI
        #expect(p.irqs == 1)
        #expect(p.inb(2) & 0x0F == 0x04, "receive data available")
        #expect(p.drain() == Array("ls\n".utf8))
        #expect(p.inb(2) & 0x0F == 0x01)
    }

    @Test func linuxPortStartupDoesNotLoseQueuedInput() {
        // What Linux's 8250 driver does when /dev/console is opened while input is already queued.
        let p = SerialProbe()
        p.serial.enqueueInput(Array("echo hello\n".utf8))
        p.out(1, 0x05) // a console write restores IER with receive interrupts on...
        p.out(2, 0x07) // ...then startup clears the FIFOs,
        p.out(2, 0x00)
        _ = p.inb(5); _ = p.inb(0); _ = p.inb(2); _ = p.inb(6) // reads the "clear interrupt" registers,
        p.out(1, 0x02); _ = p.inb(5); _ = p.inb(2); p.out(1, 0x00) // tests the THRE interrupt,
        _ = p.inb(5); _ = p.inb(0); _ = p.inb(2); _ = p.inb(6) // clears again,
        p.out(2, 0x01) // enables the FIFO and
        p.out(1, 0x05) // receive interrupts.
        #expect(p.drain() == Array("echo hello\n".utf8))
    }

    @Test func moreInputThanTheFIFOIsDeliveredInOrder() {
        let p = SerialProbe()
        p.out(2, 0x01)
        p.out(1, 0x01)
        let text = Array((0..<1000).map { UInt8(truncatingIfNeeded: $0 % 251) })
        #expect(p.serial.enqueueInput(text) == 1000)
        #expect(p.drain() == text)
        #expect(p.serial.unreadInput == 0)
    }

    @Test func queueAppliesBackpressureInsteadOfDropping() {
        let p = SerialProbe()
        let big = [UInt8](repeating: 0x61, count: Serial.inputCapacity + 10)
        #expect(p.serial.enqueueInput(big) == Serial.inputCapacity)
        #expect(p.serial.enqueueInput([0x62]) == 0)
    }

    @Test func loopbackModeReflectsModemLinesAndData() {
        let p = SerialProbe()
        p.out(4, 0x1A) // LOOP | OUT2 | RTS: Linux's autoconfig check expects MSR & 0xF0 == 0x90
        #expect(p.inb(6) & 0xF0 == 0x90)
        p.out(0, 0x5A)
        #expect(p.printed.isEmpty, "loopback bytes do not leave the UART")
        #expect(p.inb(0) == 0x5A)
        p.out(4, 0x08)
        #expect(p.inb(6) & 0xF0 == 0xB0)
    }

    @Test func scratchRegisterHoldsItsValue() {
        let p = SerialProbe()
        p.out(7, 0xA5)
        #expect(p.inb(7) == 0xA5)
    }
}

@Suite struct LegacyDeviceTests {
    @Test func i8042ResetCommandRequestsResetOnce() {
        let r = Recorder()
        let kbd = I8042(onReset: { r.interrupts.add(1, ordering: .relaxed) })
        var status: UInt8 = 0xFF
        withUnsafeMutableBytes(of: &status) { kbd.read(offset: 4, into: $0) }
        #expect(status & 0x02 == 0, "input buffer empty: ready for a command")
        withUnsafeBytes(of: UInt8(0xAD)) { kbd.write(offset: 4, from: $0) }
        #expect(r.interrupts.load(ordering: .relaxed) == 0)
        withUnsafeBytes(of: UInt8(0xFE)) { kbd.write(offset: 0, from: $0) }
        #expect(r.interrupts.load(ordering: .relaxed) == 0, "0xFE on the data port is not a reset")
        withUnsafeBytes(of: UInt8(0xFE)) { kbd.write(offset: 4, from: $0) }
        withUnsafeBytes(of: UInt8(0xFE)) { kbd.write(offset: 4, from: $0) }
        #expect(r.interrupts.load(ordering: .relaxed) == 1)
        #expect(kbd.didRequestReset)
    }

    @Test func cmosReportsTimeInBCD() {
        // 2026-11-25 21:07:09 UTC, a Wednesday.
        let cmos = CMOS(now: { 1_795_640_829 })
        func reg(_ r: UInt8) -> UInt8 {
            withUnsafeBytes(of: r) { cmos.write(offset: 0, from: $0) }
            var v: UInt8 = 0
            withUnsafeMutableBytes(of: &v) { cmos.read(offset: 1, into: $0) }
            return v
        }
        #expect(reg(0x00) == 0x09)
        #expect(reg(0x02) == 0x07)
        #expect(reg(0x04) == 0x21)
        #expect(reg(0x07) == 0x25)
        #expect(reg(0x08) == 0x11)
        #expect(reg(0x09) == 0x26)
        #expect(reg(0x32) == 0x20)
        #expect(reg(0x0A) & 0x80 == 0, "no update in progress")
    }

    @Test func absentPortsReadAllOnes() {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { AbsentPorts().read(offset: 0, into: $0) }
        #expect(v == 0xFFFF_FFFF)
    }
}
