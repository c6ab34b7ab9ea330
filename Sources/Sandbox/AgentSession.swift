import AgentProtocol
import Glibc

/// The agent session a snapshot's kept vsock connection carries (docs/snapshot-format.md,
/// `agent-session`): what the handshake negotiated, so that a restored sandbox's client attaches
/// to the guest's open connection and speaks at once, with no handshake. Written only when the
/// session stood at a frame boundary with no stream open (`AgentClient.idleMark`).
public struct AgentSession: Equatable, Sendable {
    public static let file = "agent-session"
    static let magic = "kiln-agent-session 1"

    public var version: Version
    public var software: String
    public var capabilities: Capabilities

    public init(version: Version, software: String, capabilities: Capabilities) {
        self.version = version; self.software = software; self.capabilities = capabilities
    }

    /// `key=value` lines after the magic line; `software` last, as it is free text.
    public var text: String {
        [Self.magic, "version=\(version)", "capabilities=\(capabilities.rawValue)",
         "software=\(software.filter { $0 != "\n" })"].joined(separator: "\n") + "\n"
    }

    public init?(text: String) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.first == Substring(Self.magic) else { return nil }
        var fields: [Substring: Substring] = [:]
        for line in lines.dropFirst() {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[line[..<eq]] = line[line.index(after: eq)...]
        }
        let parts = fields["version"]?.split(separator: ".") ?? []
        guard parts.count == 2, let major = UInt16(parts[0]), let minor = UInt16(parts[1]),
              let caps = fields["capabilities"].flatMap({ UInt64($0) }), let software = fields["software"] else { return nil }
        self.init(version: Version(major: major, minor: minor), software: String(software), capabilities: Capabilities(rawValue: caps))
    }

    /// The session recorded in snapshot `directory`, or nil (none, unreadable, another major).
    public static func read(snapshot directory: String) -> AgentSession? {
        guard let bytes = Files.read(directory + "/" + file), let s = AgentSession(text: String(decoding: bytes, as: UTF8.self)),
              s.version.major == Wire.version.major else { return nil }
        return s
    }

    /// Writes the file (replacing one); false when it could not be written.
    func write(snapshot directory: String) -> Bool {
        let path = directory + "/" + AgentSession.file
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }
}
