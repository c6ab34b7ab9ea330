import Glibc

/// A one-request-per-line Unix socket server (Kiln's control sockets): clients are served one at
/// a time, each line answered by `handle` with one line. Runs on the caller's thread until
/// `stop` (an eventfd) becomes readable or the listener fails.
public enum LineServer {
    /// The longest line taken; a client that sends more without a newline is dropped.
    public static let maxLine = 4096

    public static func serve(listener: Int32, stop: Int32, handle: (String) -> String) {
        var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { return } }
            if fds[1].revents != 0 { return }
            guard let client = try? UnixSocket.accept(listener) else { continue }
            if !converse(client.raw, stop: stop, handle: handle) { return }
        }
    }

    /// Serves one client until it hangs up; false when `stop` fired.
    static func converse(_ fd: Int32, stop: Int32, handle: (String) -> String) -> Bool {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: maxLine)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { return true } }
            if fds[1].revents != 0 { return false }
            let got: Int?
            do { got = try buffer.withUnsafeMutableBytes { b throws(Errno) in try UnixSocket.receive(fd, into: b) } }
            catch { return true }
            guard let count = got else { continue }
            if count == 0 { return true }
            pending += buffer[0..<count]
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self).trimmingEdgeSpaces
                pending.removeFirst(newline + 1)
                guard !line.isEmpty else { continue }
                let reply = Array((handle(line) + "\n").utf8)
                var sent = 0
                while sent < reply.count {
                    guard let k = try? reply[sent...].withUnsafeBytes({ b throws(Errno) in try UnixSocket.send(fd, b) }) else { return true }
                    if k == 0 { usleep(1000) }
                    sent += k
                }
            }
            if pending.count > maxLine { return true } // no newline in sight: not a client of ours
        }
    }
}

extension String {
    var trimmingEdgeSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        return String(self.drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}
