import Glibc

/// Raw mode for a terminal on standard input, restored by `restore()`.
public struct RawTerminal: Sendable {
    private let fd: Int32
    private let saved: termios

    /// Puts `fd` into raw mode if it is a terminal; nil otherwise.
    public static func enter(fd: Int32) -> RawTerminal? {
        guard isatty(fd) == 1 else { return nil }
        var original = termios()
        guard tcgetattr(fd, &original) == 0 else { return nil }
        var raw = original
        cfmakeraw(&raw)
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { return nil }
        return RawTerminal(fd: fd, saved: original)
    }

    public func restore() {
        var saved = saved
        tcsetattr(fd, TCSANOW, &saved)
    }
}
