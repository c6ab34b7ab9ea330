/// One decoded frame: the stream it belongs to and what it says.
public struct Frame: Equatable, Sendable {
    public var stream: UInt32
    public var message: Message

    public init(stream: UInt32, _ message: Message) {
        self.stream = stream
        self.message = message
    }
}

/// Every message of protocol version 1. Field encodings are in docs/agent-protocol.md.
public enum Message: Equatable, Sendable {
    case hello(Hello)
    case helloAck(HelloAck)
    case ping(nonce: UInt64)
    case pong(Pong)
    case shutdown(graceMillis: UInt32)
    /// The peer found a protocol violation and closes after this frame. `code` is kept raw so
    /// that codes from a newer peer still reach the user.
    case protocolError(code: UInt16, message: String)

    case exec(Exec)
    case started(pid: UInt32)
    case failure(Failure)
    case stdin([UInt8])
    case stdinClose
    case stdout([UInt8])
    case stderr([UInt8])
    case credit(Channel, bytes: UInt32)
    case resize(WindowSize)
    case signal(Int32)
    case exit(ExitStatus)

    case writeFile(WriteFile)
    case readFile(path: String)
    case fileInfo(FileInfo)
    case fileData([UInt8])
    case fileEnd
    case fileWritten(bytes: UInt64)
    case cancel

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .helloAck: .helloAck
        case .ping: .ping
        case .pong: .pong
        case .shutdown: .shutdown
        case .protocolError: .protocolError
        case .exec: .exec
        case .started: .started
        case .failure: .failure
        case .stdin: .stdin
        case .stdinClose: .stdinClose
        case .stdout: .stdout
        case .stderr: .stderr
        case .credit: .credit
        case .resize: .resize
        case .signal: .signal
        case .exit: .exit
        case .writeFile: .writeFile
        case .readFile: .readFile
        case .fileInfo: .fileInfo
        case .fileData: .fileData
        case .fileEnd: .fileEnd
        case .fileWritten: .fileWritten
        case .cancel: .cancel
        }
    }
}

public struct Hello: Equatable, Sendable {
    public var version: Version
    /// Free text naming the host software, e.g. "kiln 0.3.0"; for logs only.
    public var software: String
    public init(version: Version = Wire.version, software: String) {
        self.version = version
        self.software = software
    }
}

public struct HelloAck: Equatable, Sendable {
    public var version: Version
    public var software: String
    public var capabilities: Capabilities
    public init(version: Version = Wire.version, software: String, capabilities: Capabilities) {
        self.version = version
        self.software = software
        self.capabilities = capabilities
    }
}

/// What the guest can do beyond the baseline of its protocol version.
public struct Capabilities: OptionSet, Equatable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// The guest has /dev/ptmx: Exec with a PTY works.
    public static let pty = Capabilities(rawValue: 1 << 0)
    /// The agent runs as root: Exec and WriteFile may set any uid/gid.
    public static let setIDs = Capabilities(rawValue: 1 << 1)
}

public struct Pong: Equatable, Sendable {
    public var nonce: UInt64
    public var uptimeMillis: UInt64
    public var processes: UInt32
    public init(nonce: UInt64, uptimeMillis: UInt64, processes: UInt32) {
        self.nonce = nonce
        self.uptimeMillis = uptimeMillis
        self.processes = processes
    }
}

public struct WindowSize: Equatable, Sendable {
    public var rows: UInt16
    public var columns: UInt16
    public init(rows: UInt16, columns: UInt16) {
        self.rows = rows
        self.columns = columns
    }
}

public struct Exec: Equatable, Sendable {
    public var argv: [String]
    /// The whole environment as "NAME=value" strings; nothing is inherited from the agent.
    public var environment: [String]
    /// Empty means "/".
    public var workingDirectory: String
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    /// With a PTY, stdin and stdout are the terminal and stderr is merged into stdout.
    public var pty: WindowSize?
    /// 0: no timeout. Otherwise the agent kills the process group (SIGKILL) after this long.
    public var timeoutMillis: UInt32

    public init(argv: [String], environment: [String] = [], workingDirectory: String = "",
                uid: UInt32 = 0, gid: UInt32 = 0, groups: [UInt32] = [], pty: WindowSize? = nil,
                timeoutMillis: UInt32 = 0) {
        self.argv = argv
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.pty = pty
        self.timeoutMillis = timeoutMillis
    }
}

/// An operation on a stream failed; the stream is closed. `errno` is a Linux errno, 0 if none fits.
public struct Failure: Error, Equatable, Sendable {
    public var errno: Int32
    public var message: String
    public init(errno: Int32, message: String) {
        self.errno = errno
        self.message = message
    }
}

/// The data channels that flow control counts separately within one stream.
public enum Channel: UInt8, Equatable, Sendable, CaseIterable {
    case stdin = 0, stdout = 1, stderr = 2, file = 3
}

public struct ExitStatus: Equatable, Sendable {
    public enum Termination: Equatable, Sendable {
        case exited(code: Int32)
        case signaled(signal: Int32)
    }
    public var termination: Termination
    public var coreDumped: Bool
    /// The agent killed the process because Exec's timeout passed.
    public var timedOut: Bool
    public init(_ termination: Termination, coreDumped: Bool = false, timedOut: Bool = false) {
        self.termination = termination
        self.coreDumped = coreDumped
        self.timedOut = timedOut
    }
}

public struct WriteFile: Equatable, Sendable {
    public struct Options: OptionSet, Equatable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Create missing parent directories (mode 0755, owned by uid/gid).
        public static let createParents = Options(rawValue: 1 << 0)
        /// Fail with EEXIST if the path exists.
        public static let exclusive = Options(rawValue: 1 << 1)
        static let known: Options = [.createParents, .exclusive]
    }
    public var path: String
    /// Permission bits including setuid, setgid and sticky (0o7777); higher bits are invalid.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var options: Options
    public init(path: String, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0, options: Options = []) {
        self.path = path
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.options = options
    }
}

public struct FileInfo: Equatable, Sendable {
    public var mode: UInt32
    public var size: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public init(mode: UInt32, size: UInt64, uid: UInt32, gid: UInt32) {
        self.mode = mode
        self.size = size
        self.uid = uid
        self.gid = gid
    }
}
