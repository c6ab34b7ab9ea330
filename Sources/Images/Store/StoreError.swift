import Glibc
import LinuxSys

/// What can go wrong in the content store; each prints as one line.
public enum StoreError: Error, Sendable, CustomStringConvertible {
    /// A system call failed on a path of the store (a full disk is ENOSPC here).
    case io(path: String, Errno)
    /// Bytes arrived whose SHA-256 is not the digest they were asked for under.
    case digestMismatch(expected: String, actual: String)
    /// More or fewer bytes than the descriptor's size.
    case sizeMismatch(digest: String, expected: Int64, actual: Int64)
    case badDigest(String)
    /// A JSON document in the store (or about to enter it) that does not decode.
    case badDocument(what: String, reason: String)
    /// A reference names a blob the store does not hold (removed by hand, or a store from a crash).
    case missingBlob(String)
    case tooLarge(what: String, limit: Int)

    public var description: String {
        switch self {
        case .io(let path, let errno): return "\(path): \(String(cString: strerror(errno.code)))" + (errno.call.isEmpty ? "" : " (\(errno.call.split(separator: " ").first ?? ""))")
        case .digestMismatch(let expected, let actual): return "content does not match its digest: expected \(expected), got \(actual)"
        case .sizeMismatch(let digest, let expected, let actual):
            return actual < expected ? "\(digest): content ended after \(actual) of \(expected) bytes"
                                     : "\(digest): content is longer than its \(expected) bytes"
        case .badDigest(let d): return "'\(d)' is not a sha256 digest"
        case .badDocument(let what, let reason): return "\(what) is not valid: \(reason)"
        case .missingBlob(let d): return "the image store has no blob \(d) (pull the image again)"
        case .tooLarge(let what, let limit): return "\(what) is larger than \(limit) bytes"
        }
    }
}
