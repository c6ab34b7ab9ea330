/// Why a pull failed; each prints as one line for the CLI.
public enum RegistryError: Error, Sendable, CustomStringConvertible {
    /// 401: no credentials, wrong credentials, or a token the registry refused.
    case unauthorized(host: String, repository: String, detail: String)
    /// 403.
    case denied(host: String, repository: String, detail: String)
    /// 404 for a manifest (`what` is the reference) or a blob (`what` is its digest).
    case notFound(what: String, detail: String)
    case tooManyRequests(host: String)
    /// 5xx.
    case server(host: String, status: Int, detail: String)
    case unexpectedStatus(host: String, status: Int, detail: String)
    /// A connection that could not be made, broke, or timed out.
    case connection(host: String, reason: String)
    /// The token service in a registry's Bearer challenge failed.
    case tokenService(realm: String, reason: String)
    case digestMismatch(what: String, expected: String, actual: String)
    case badManifest(reference: String, reason: String)
    case noPlatform(reference: String, wanted: String, available: [String])
    /// The store could not take a blob: a full disk, a blob whose content does not match its digest.
    case store(StoreError)

    public var description: String {
        switch self {
        case .unauthorized(let host, let repository, let detail):
            return "\(host): not authorized to pull \(repository)" + (detail.isEmpty ? "" : ": \(detail)")
        case .denied(let host, let repository, let detail):
            return "\(host): access to \(repository) denied (403)" + (detail.isEmpty ? "" : ": \(detail)")
        case .notFound(let what, let detail): return "\(what): not found (404)" + (detail.isEmpty ? "" : ": \(detail)")
        case .tooManyRequests(let host): return "\(host): too many requests (429); try again later"
        case .server(let host, let status, let detail): return "\(host): registry error \(status)" + (detail.isEmpty ? "" : ": \(detail)")
        case .unexpectedStatus(let host, let status, let detail): return "\(host): unexpected HTTP status \(status)" + (detail.isEmpty ? "" : ": \(detail)")
        case .connection(let host, let reason): return "\(host): \(reason)"
        case .tokenService(let realm, let reason): return "token service \(realm): \(reason)"
        case .digestMismatch(let what, let expected, let actual): return "\(what): content does not match its digest (expected \(expected), got \(actual))"
        case .badManifest(let reference, let reason): return "\(reference): \(reason)"
        case .noPlatform(let reference, let wanted, let available):
            return "\(reference): no \(wanted) image in the index (it has: \(available.isEmpty ? "none" : available.joined(separator: ", ")))"
        case .store(let error): return error.description
        }
    }
}
