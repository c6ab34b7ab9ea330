import Glibc

/// A failed system call's error number, with the name of the call that failed.
public struct Errno: Error, Equatable, CustomStringConvertible, Sendable {
    public let code: Int32
    public let call: String

    public init(_ code: Int32, call: String = "") {
        self.code = code
        self.call = call
    }

    /// The current thread's `errno`, attributed to `call`.
    public static func current(_ call: String) -> Errno { Errno(errno, call: call) }

    public var description: String {
        let text = String(cString: strerror(code))
        return call.isEmpty ? text : "\(call): \(text)"
    }

    public static func == (a: Errno, b: Errno) -> Bool { a.code == b.code }

    public static let interrupted = Errno(EINTR)
    public static let wouldBlock = Errno(EAGAIN)
}

/// Runs a system call returning -1 on error, retrying on EINTR.
@inline(__always)
public func retrying<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        if errno != EINTR { throw Errno.current(call) }
    }
}

/// Runs a system call returning -1 on error, once (EINTR is reported to the caller).
@inline(__always)
public func once<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(Errno) -> T {
    let result = body()
    if result == -1 { throw Errno.current(call) }
    return result
}
