/// The commands a running VM takes, with one grammar wherever they arrive: a line on the VMM's
/// own `--control` socket or on the supervisor's (SupervisorControl), and a message on a jailed
/// VMM's command channel (fd 4 or a detached VMM's command socket). docs/snapshot-format.md.
/// Replies stay one text line: `ok[ detail]` or `error: why`.
public enum VMMCommand: Sendable, Equatable {
    case pause
    case resume
    /// `ok running` or `ok paused`.
    case status
    /// The files a snapshot is made of (`ok memory state disk-0.layer ...`): channel only, for a
    /// supervisor that creates them because the jailed VMM cannot see the host's directories.
    case files
    /// A snapshot into `directory` (control sockets), or with no directory into the descriptors
    /// attached to the message, in the order `files` named them (channel).
    case snapshot(directory: String?)

    /// What a user may type on a control socket.
    public static let usage = "pause, resume, status, snapshot DIR"

    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public let text: String
        public init(text: String) { self.text = text }
        public var description: String { "unknown command '\(text)' (\(VMMCommand.usage))" }
    }

    /// Parses one command (a line without its newline, or a message). The directory of
    /// `snapshot DIR` is the rest of the text, spaces included.
    public static func parse(_ text: String) throws(ParseError) -> VMMCommand {
        let words = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        switch (words.first.map(String.init) ?? "", words.count) {
        case ("pause", 1): return .pause
        case ("resume", 1): return .resume
        case ("status", 1): return .status
        case ("files", 1): return .files
        case ("snapshot", 1): return .snapshot(directory: nil)
        case ("snapshot", 2): return .snapshot(directory: String(words[1]))
        default: throw ParseError(text: text)
        }
    }

    /// The text `parse` reads back as this command.
    public var text: String {
        switch self {
        case .pause: "pause"
        case .resume: "resume"
        case .status: "status"
        case .files: "files"
        case .snapshot(nil): "snapshot"
        case .snapshot(let directory?): "snapshot \(directory)"
        }
    }
}
