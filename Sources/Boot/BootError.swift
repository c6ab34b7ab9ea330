import GuestMemory
import LinuxSys

/// Why a kernel or initrd could not be loaded. Every malformed image ends here, never in a crash.
public enum BootError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncated(String)
    case notAKernel(String)
    case unsupported(String)
    case malformed(String)
    case doesNotFit(String)
    case cmdlineTooLong(length: Int, max: Int)
    case io(String, Errno)

    public var description: String {
        switch self {
        case .truncated(let what): return "kernel image is truncated: \(what)"
        case .notAKernel(let what): return "not a Linux kernel: \(what)"
        case .unsupported(let what): return "unsupported kernel: \(what)"
        case .malformed(let what): return "malformed kernel image: \(what)"
        case .doesNotFit(let what): return "guest memory too small: \(what)"
        case .cmdlineTooLong(let length, let max): return "kernel command line is \(length) bytes; this kernel accepts at most \(max - 1)"
        case .io(let what, let e): return "cannot read \(what): \(e)"
        }
    }

    /// Maps a guest-memory refusal while placing `what` into a clear error.
    static func placing(_ what: String, _ error: GuestMemoryError) -> BootError {
        switch error {
        case .shortRead: return .truncated("\(what) ends before its declared size")
        case .readFailed(let e): return .io(what, e)
        default: return .doesNotFit("\(what) does not fit in guest memory (\(error))")
        }
    }
}
