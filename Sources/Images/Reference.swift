/// An image reference as Docker and the OCI distribution spec write it:
/// `[host[:port]/]path[:tag][@sha256:hex]` (docs/images.md, "References").
///
/// Normalised the way Docker does: no host means Docker Hub (`docker.io`), a one-component
/// path on Docker Hub gets `library/`, and neither tag nor digest means `:latest`. The first
/// component is a host when it is `localhost` or holds a `.` or a `:`.
public struct ImageReference: Sendable, Hashable, CustomStringConvertible {
    /// The registry as written, with its port: "docker.io", "127.0.0.1:5000", "[::1]:5000".
    public var host: String
    /// The repository path inside the registry: "library/busybox", "team/app".
    public var repository: String
    public var tag: String?
    /// "sha256:<64 lowercase hex digits>" when the reference pins the content.
    public var digest: String?

    public static let dockerHub = "docker.io"

    public init(host: String, repository: String, tag: String?, digest: String?) {
        self.host = host; self.repository = repository; self.tag = tag; self.digest = digest
    }

    public init(parsing text: String) throws(ReferenceError) {
        func bad(_ why: String) -> ReferenceError { ReferenceError(reference: text, reason: why) }
        guard !text.isEmpty else { throw bad("it is empty") }
        // Each part is bounded below (host 255, path 255, tag 128), so a canonical form (at most
        // 712 bytes) is always short enough to parse again.
        guard text.utf8.count <= 1024 else { throw bad("it is longer than 1024 bytes") }
        guard text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw bad("it holds a space, a control or a non-ASCII character") }

        var rest = Substring(text)
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            let d = String(rest[rest.index(after: at)...])
            guard Digest.isValid(d) else { throw bad("'\(d)' is not a digest (sha256: and 64 lowercase hex digits)") }
            digest = d
            rest = rest[..<at]
        }
        // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        var tag: String?
        let lastSlash = rest.lastIndex(of: "/")
        if let colon = rest.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
            let t = String(rest[rest.index(after: colon)...])
            guard Self.isTag(t) else { throw bad("'\(t)' is not a tag (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')") }
            tag = t
            rest = rest[..<colon]
        }
        var components = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        var host = Self.dockerHub
        if components.count > 1, let first = components.first,
           first == "localhost" || first.contains(".") || first.contains(":") {
            guard first.utf8.count <= 255, Self.isHost(first) else { throw bad("'\(first)' is not a registry host[:port]") }
            host = first
            components.removeFirst()
        }
        guard !components.isEmpty, components.allSatisfy({ !$0.isEmpty }) else { throw bad("the repository path is empty or has an empty component") }
        for c in components where !Self.isPathComponent(c) {
            throw bad("'\(c)' is not a repository name component (lowercase letters, digits, and '.', '_', '__', '-' between them)")
        }
        if host == Self.dockerHub && components.count == 1 { components.insert("library", at: 0) }
        let repository = components.joined(separator: "/")
        guard repository.utf8.count <= 255 else { throw bad("the repository name is longer than 255 bytes") }
        if tag == nil && digest == nil { tag = "latest" }
        self.init(host: host, repository: repository, tag: tag, digest: digest)
    }

    /// The canonical form: `host/repository[:tag][@digest]`.
    public var description: String {
        host + "/" + repository + (tag.map { ":" + $0 } ?? "") + (digest.map { "@" + $0 } ?? "")
    }

    /// The host the HTTP requests go to: Docker Hub's API is not served at docker.io itself.
    public var registryHost: String { host == Self.dockerHub ? "registry-1.docker.io" : host }

    /// What the manifest request asks for: the digest when there is one, else the tag.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    /// The same image with another digest and no tag (a platform manifest chosen from an index).
    public func pinned(to digest: String) -> ImageReference {
        ImageReference(host: host, repository: repository, tag: nil, digest: digest)
    }

    // Grammar from the distribution spec's reference rules, written as small scanners.

    static func isTag(_ t: String) -> Bool {
        let b = Array(t.utf8)
        guard (1...128).contains(b.count), b[0] != UInt8(ascii: "."), b[0] != UInt8(ascii: "-") else { return false }
        return b.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
    static func isPathComponent(_ c: String) -> Bool {
        let b = Array(c.utf8)
        func lowerAlnum(_ x: UInt8) -> Bool { (x >= 0x61 && x <= 0x7A) || (x >= 0x30 && x <= 0x39) }
        var i = 0
        guard !b.isEmpty, lowerAlnum(b[0]) else { return false }
        while i < b.count {
            while i < b.count, lowerAlnum(b[i]) { i += 1 }
            guard i < b.count else { return true }
            // A separator, then at least one alphanumeric.
            let start = i
            if b[i] == UInt8(ascii: ".") { i += 1 }
            else if b[i] == UInt8(ascii: "_") { i += 1; if i < b.count, b[i] == UInt8(ascii: "_") { i += 1 } }
            else if b[i] == UInt8(ascii: "-") { while i < b.count, b[i] == UInt8(ascii: "-") { i += 1 } }
            guard i > start, i < b.count, lowerAlnum(b[i]) else { return false }
        }
        return true
    }

    /// A DNS name or IPv4 address, or `[IPv6]`, then an optional `:port`.
    static func isHost(_ h: String) -> Bool {
        var name = Substring(h)
        if name.hasPrefix("[") {
            guard let close = name.firstIndex(of: "]") else { return false }
            let inside = name[name.index(after: name.startIndex)..<close]
            guard !inside.isEmpty, inside.utf8.allSatisfy({ isHex($0) || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") }) else { return false }
            name = name[name.index(after: close)...]
            if name.isEmpty { return true }
            guard name.hasPrefix(":") else { return false }
            return isPort(name.dropFirst())
        }
        if let colon = name.firstIndex(of: ":") {
            guard isPort(name[name.index(after: colon)...]) else { return false }
            name = name[..<colon]
        }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        return !labels.isEmpty && labels.allSatisfy { label in
            let b = Array(label.utf8)
            return !b.isEmpty && b.count <= 63 && isAlnum(b[0]) && isAlnum(b[b.count - 1])
                && b.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "-") }
        }
    }

    static func isPort(_ p: Substring) -> Bool {
        guard !p.isEmpty, p.count <= 5, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(p) else { return false }
        return v <= 65535
    }

    static func isAlnum(_ x: UInt8) -> Bool {
        (x >= 0x61 && x <= 0x7A) || (x >= 0x41 && x <= 0x5A) || (x >= 0x30 && x <= 0x39)
    }

    static func isHex(_ x: UInt8) -> Bool {
        (x >= 0x30 && x <= 0x39) || (x >= 0x61 && x <= 0x66) || (x >= 0x41 && x <= 0x46)
    }
}

public struct ReferenceError: Error, Sendable, Equatable, CustomStringConvertible {
    public let reference: String
    public let reason: String
    public var description: String { "'\(reference)' is not an image reference: \(reason)" }
}

/// Content digests. Kiln stores and accepts only sha256, which every registry serves.
public enum Digest {
    /// "sha256:" and 64 lowercase hex digits.
    public static func isValid(_ d: String) -> Bool {
        guard d.hasPrefix("sha256:") else { return false }
        let hex = d.utf8.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// The hex part of a valid digest.
    static func hex(_ d: String) -> String { String(d.dropFirst(7)) }
}
