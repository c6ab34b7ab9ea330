import CLinux
import Devices
import Glibc
import LinuxSys
import Synchronization

/// Connects the guest's serial port to host file descriptors: guest output to `output`
/// (watching it for a kernel panic), host input from `input` on a dedicated thread.
///
/// With a `limit`, an output that is a regular file (a sandbox's console.log) never grows past
/// `limit` bytes: when it is full, its content moves to `rotation` (console.log.1, replacing what
/// that held) and the output starts over empty, so the newest output is always in the log and
/// the two files together hold at most twice the limit. Without a rotation file the old content is
/// dropped. The vCPU thread that writes the byte that overflows does the move (`ftruncate`,
/// `pread64` and `write`, Security/seccomp/vcpu.policy; the rotation file is opened O_APPEND, so
/// that no write at an offset is needed).
final class Console: Sendable {
    let output: Int32
    let input: Int32?
    /// 0: no cap.
    let limit: UInt64
    /// This console's own descriptor for the rotation file (closed with it), or -1.
    let rotation: Int32
    private let log: Mutex<LogState>
    /// Set once the guest printed "Kernel panic - not syncing".
    var sawPanic: Bool { log.withLock { $0.panicWatch.matched } }
    let terminal: RawTerminal?

    struct LogState {
        var panicWatch = PanicWatch()
        /// Bytes in the output file (as this console wrote them).
        var size: UInt64 = 0
        /// The output could not be emptied: what the guest writes past the cap is dropped.
        var full = false
    }

    init(input: Int32?, output: Int32, limit: UInt64 = 0, rotation: Int32? = nil) {
        self.input = input
        self.output = output
        var st = stat()
        let regular = limit > 0 && fstat(output, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
        self.limit = regular ? limit : 0
        self.rotation = regular ? rotation.map { fcntl($0, F_DUPFD_CLOEXEC, 3) } ?? -1 : -1
        log = Mutex(LogState(size: regular ? UInt64(st.st_size) : 0))
        terminal = input.flatMap { RawTerminal.enter(fd: $0) }
    }

    deinit { if rotation >= 0 { Glibc.close(rotation) } }

    /// Called on a vCPU thread for each byte the guest transmits.
    func guestWrote(_ byte: UInt8) {
        log.withLock { state in
            state.panicWatch.feed(byte)
            if limit > 0 {
                if state.size >= limit {
                    if state.full || !rotate() { state.full = true; return }
                    state.size = 0
                }
                state.size += 1
            }
            var b = byte
            while Glibc.write(output, &b, 1) == -1 && errno == EINTR {}
        }
    }

    /// Moves the output file's content to the rotation file (best effort: a failed copy loses
    /// the old content, never the new) and empties it. False when it cannot be emptied.
    private func rotate() -> Bool {
        if rotation >= 0 && ftruncate(rotation, 0) == 0 {
            let chunk = 64 * 1024
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 16)
            defer { buffer.deallocate() }
            var offset: off_t = 0
            copy: while true {
                let n = pread(output, buffer, chunk, offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                var done = 0
                while done < n {
                    let w = Glibc.write(rotation, buffer + done, n - done)
                    if w < 0 && errno == EINTR { continue }
                    if w <= 0 { break copy }
                    done += w
                }
                offset += off_t(n)
            }
        }
        // The output is O_APPEND: the next write lands at the new end, offset 0.
        return ftruncate(output, 0) == 0
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
