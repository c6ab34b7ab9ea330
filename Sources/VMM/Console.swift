import CLinux
import Devices
import Glibc
import LinuxSys
import Synchronization

/// Connects the guest's serial port to host file descriptors: guest output to `output`
/// (watching it for a kernel panic), host input from `input` on a dedicated thread.
final class Console: Sendable {
    let output: Int32
    let input: Int32?
    private let panicWatch = Mutex(PanicWatch())
    /// Set once the guest printed "Kernel panic - not syncing".
    var sawPanic: Bool { panicWatch.withLock { $0.matched } }
    let terminal: RawTerminal?

    init(input: Int32?, output: Int32) {
        self.input = input
        self.output = output
        terminal = input.flatMap { RawTerminal.enter(fd: $0) }
    }

    /// Called on a vCPU thread for each byte the guest transmits.
    func guestWrote(_ byte: UInt8) {
        var b = byte
        while Glibc.write(output, &b, 1) == -1 && errno == EINTR {}
        panicWatch.withLock { $0.feed(byte) }
    }

    /// Reads host input into `serial` until `stop` is signalled. Returns early on Ctrl-A x
    /// from a terminal, calling `quit`.
    func pump(into serial: Serial, stop: Int32, gate: PauseGate? = nil, quit: () -> Void) {
        guard let input else { return }
        var fds = [pollfd(fd: input, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 4096)
        var escape = false
        var inputOpen = true
        while true {
            fds[0].fd = inputOpen ? input : -1
            let n = poll(&fds, 2, -1)
            if n < 0 { if errno == EINTR { continue } else { return } }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
            if count < 0 { if errno == EINTR || errno == EAGAIN { continue } }
            if count <= 0 { inputOpen = false; continue } // end of input: the guest keeps running
            var bytes = Array(buffer[0..<count])
            if terminal != nil {
                // Ctrl-A x quits; Ctrl-A Ctrl-A sends a literal Ctrl-A.
                var kept: [UInt8] = []
                for b in bytes {
                    if escape {
                        escape = false
                        if b == UInt8(ascii: "x") { quit(); return }
                        kept.append(b)
                    } else if b == 0x01 {
                        escape = true
                    } else {
                        kept.append(b)
                    }
                }
                bytes = kept
            }
            gate?.waitOpen(stop: stop) // a paused guest gets no input (its UART state is being saved)
            var sent = 0
            while sent < bytes.count {
                sent += serial.enqueueInput(bytes[sent...])
                if sent < bytes.count { usleep(1000) } // the guest is not reading: wait, never drop
            }
        }
    }

    func restore() { terminal?.restore() }
}

/// Recognises Linux's panic banner in a byte stream.
struct PanicWatch {
    static let banner = Array("Kernel panic - not syncing".utf8)
    var matched = false
    var position = 0

    mutating func feed(_ byte: UInt8) {
        if matched { return }
        if byte == PanicWatch.banner[position] {
            position += 1
            if position == PanicWatch.banner.count { matched = true }
        } else {
            position = byte == PanicWatch.banner[0] ? 1 : 0
        }
    }
}
