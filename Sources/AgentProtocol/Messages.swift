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
    /// (1.1) Entropy for the guest's random number generator, 1 to 512 bytes: sent to every
    /// sandbox restored from a snapshot, so that clones do not share random streams.
    case reseed([UInt8])
    /// (1.1) The answer to Reseed: 0, or the errno of the guest's RNDADDENTROPY/RNDRESEEDCRNG.
    case reseeded(errno: Int32)
    /// (1.1) Sets the guest's wall clock (CLOCK_REALTIME) to `seconds` + `nanoseconds` since the
    /// Unix epoch; no answer. Sent after a restore, whose guest clock stopped at snapshot time.
    case setTime(seconds: Int64, nanoseconds: UInt32)

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

    /// (1.2) Exec with options: a process that may outlive its connection, and a tag.
    case spawn(Spawn)
    /// (1.2) Attaches this new stream to a process the agent runs (kept or not), by pid.
    case attach(pid: UInt32)
    /// (1.2) Asks for every process the agent runs: answered by Processes frames, then ListEnd.
    case listProcesses
    case processes([ProcessSummary])
    /// (1.2) Sends a signal to a process group the agent started, without attaching to it.
    case signalProcess(pid: UInt32, signal: Int32)

    /// (1.2) Filesystem operations, each on a new stream.
    case stat(path: String)
    /// The answer to Stat and Rename.
    case entry(EntryInfo)
    /// Lists `path` down to `depth` levels (0 and 1: direct children): Entries frames, then ListEnd.
    case listDirectory(path: String, depth: UInt32)
    case entries([EntryInfo])
    /// Ends the answer to ListDirectory or ListProcesses.
    case listEnd
    case makeDirectory(MakeDirectory)
    /// The answer to MakeDirectory: false when the path already was a directory.
    case directoryMade(created: Bool)
    case rename(from: String, to: String)
    case remove(path: String)
    /// Success without a value: the answer to Remove and SignalProcess.
    case done
    /// Watches a directory until the host sends Cancel: Watching, then Events frames.
    case watchDirectory(path: String, recursive: Bool)
    case watching
    case events([WatchEvent])

    /// (1.2) Looks a user up in the guest's /etc/passwd and /etc/group, by name or number.
    case lookupUser(name: String)
    case user(UserInfo)

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .helloAck: .helloAck
        case .ping: .ping
        case .pong: .pong
        case .shutdown: .shutdown
        case .protocolError: .protocolError
        case .reseed: .reseed
        case .reseeded: .reseeded
        case .setTime: .setTime
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
        case .spawn: .spawn
        case .attach: .attach
        case .listProcesses: .listProcesses
        case .processes: .processes
        case .signalProcess: .signalProcess
        case .stat: .stat
        case .entry: .entry
        case .listDirectory: .listDirectory
        case .entries: .entries
        case .listEnd: .listEnd
        case .makeDirectory: .makeDirectory
        case .directoryMade: .directoryMade
        case .rename: .rename
        case .remove: .remove
        case .done: .done
        case .watchDirectory: .watchDirectory
        case .watching: .watching
        case .events: .events
        case .lookupUser: .lookupUser
        case .user: .user
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

/// (1.2) Exec with options (docs/agent-protocol.md, "Processes that outlive the connection").
public struct Spawn: Equatable, Sendable {
    public struct Flags: OptionSet, Equatable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The process keeps running when the connection that started it closes.
        public static let keep = Flags(rawValue: 1 << 0)
        /// (1.3) The tag is followed by a `Limits` record. Set by the encoder from `limits`.
        public static let limits = Flags(rawValue: 1 << 1)
        /// (1.4) The `Limits` record goes on with `u32 openFiles` (only with `limits`). Set by
        /// the encoder when `limits.openFiles` is not 0, so that a pids-only Spawn stays 1.3.
        public static let openFiles = Flags(rawValue: 1 << 2)
        static let known: Flags = [.keep, .limits, .openFiles]
    }
    public var exec: Exec
    public var flags: Flags
    /// Free text the host chooses (E2B's process tag); reported by ListProcesses.
    public var tag: String
    /// (1.3) Limits for the process and everything it starts; nil: the agent's defaults.
    public var limits: Limits?
    public init(_ exec: Exec, flags: Flags = [], tag: String = "", limits: Limits? = nil) {
        self.exec = exec
        var flags = limits == nil ? flags.subtracting(.limits) : flags.union(.limits)
        if (limits?.openFiles ?? 0) == 0 { flags.remove(.openFiles) } else { flags.insert(.openFiles) }
        self.flags = flags
        self.tag = tag
        self.limits = limits
    }
}

/// (1.3) What a spawned command and its descendants may use, enforced by the agent through
/// the command's own cgroup (docs/agent-protocol.md, "Limits").
public struct Limits: Equatable, Sendable {
    /// The most processes and threads at once (the cgroup's pids.max); 0: the agent's default.
    public var pids: UInt32
    /// (1.4) RLIMIT_NOFILE, soft and hard, of the process (inherited by what it starts); 0: the
    /// agent's default (1024 soft, 4096 hard).
    public var openFiles: UInt32
    public init(pids: UInt32 = 0, openFiles: UInt32 = 0) { self.pids = pids; self.openFiles = openFiles }
}

/// (1.2) One process in the answer to ListProcesses.
public struct ProcessSummary: Equatable, Sendable {
    public struct Flags: OptionSet, Equatable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let pty = Flags(rawValue: 1 << 0)
        /// Started with Spawn's keep flag.
        public static let kept = Flags(rawValue: 1 << 1)
        /// A stream of a live connection is attached to it.
        public static let attached = Flags(rawValue: 1 << 2)
        /// It has exited; its status waits for an Attach to collect it.
        public static let exited = Flags(rawValue: 1 << 3)
        static let known: Flags = [.pty, .kept, .attached, .exited]
    }
    public var pid: UInt32
    public var tag: String
    public var argv: [String]
    /// The environment as the host gave it (without what the agent adds).
    public var environment: [String]
    public var workingDirectory: String
    public var flags: Flags
    public init(pid: UInt32, tag: String = "", argv: [String], environment: [String] = [], workingDirectory: String = "",
                flags: Flags = []) {
        self.pid = pid
        self.tag = tag
        self.argv = argv
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.flags = flags
    }
}

/// (1.2) A filesystem entry as Stat, Rename and ListDirectory report it. Everything is from
/// lstat(2), so a symlink is reported as itself; `symlink` says where it leads.
public struct EntryInfo: Equatable, Sendable {
    public enum Kind: UInt8, Equatable, Sendable, CaseIterable {
        /// A device, FIFO or socket (or, as a symlink's target kind, a target that does not resolve).
        case other = 0
        case file = 1
        case directory = 2
        case symlink = 3
    }
    public struct Symlink: Equatable, Sendable {
        /// The link's contents, as readlink(2) returns them.
        public var target: String
        /// The absolute path with every link resolved (realpath(3)); empty when it does not resolve.
        public var resolved: String
        /// What the resolved path is; `.other` when it does not resolve.
        public var targetKind: Kind
        /// Permission bits of the resolved path; 0 when it does not resolve.
        public var targetMode: UInt32
        public init(target: String, resolved: String, targetKind: Kind, targetMode: UInt32) {
            self.target = target
            self.resolved = resolved
            self.targetKind = targetKind
            self.targetMode = targetMode
        }
    }
    /// The last path component.
    public var name: String
    /// The path as the request named it (ListDirectory: the requested path, "/", the relative path).
    public var path: String
    public var kind: Kind
    /// Permission bits including setuid, setgid and sticky (0o7777).
    public var mode: UInt32
    public var size: UInt64
    public var uid: UInt32
    public var gid: UInt32
    /// Names from the guest's /etc/passwd and /etc/group; empty when the id is not there.
    public var owner: String
    public var group: String
    public var modifiedSeconds: Int64
    /// Below 10^9.
    public var modifiedNanoseconds: UInt32
    /// Present exactly when `kind` is `.symlink`.
    public var symlink: Symlink?

    public init(name: String, path: String, kind: Kind, mode: UInt32, size: UInt64 = 0, uid: UInt32 = 0, gid: UInt32 = 0,
                owner: String = "", group: String = "", modifiedSeconds: Int64 = 0, modifiedNanoseconds: UInt32 = 0,
                symlink: Symlink? = nil) {
        self.name = name
        self.path = path
        self.kind = kind
        self.mode = mode
        self.size = size
        self.uid = uid
        self.gid = gid
        self.owner = owner
        self.group = group
        self.modifiedSeconds = modifiedSeconds
        self.modifiedNanoseconds = modifiedNanoseconds
        self.symlink = symlink
    }
}

/// (1.2) Creates a directory and any missing parents.
public struct MakeDirectory: Equatable, Sendable {
    public var path: String
    /// Permission bits (0o7777) of every directory created, applied without the umask.
    public var mode: UInt32
    /// Owner of every directory created (when the agent runs as root).
    public var uid: UInt32
    public var gid: UInt32
    public init(path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) {
        self.path = path
        self.mode = mode
        self.uid = uid
        self.gid = gid
    }
}

/// (1.2) One change in a watched directory.
public struct WatchEvent: Equatable, Sendable {
    /// envd's EventType numbering.
    public enum Kind: UInt8, Equatable, Sendable, CaseIterable {
        case create = 1, write = 2, remove = 3, rename = 4, chmod = 5
    }
    public var kind: Kind
    /// The entry's path relative to the watched directory ("" for the directory itself).
    public var name: String
    public init(_ kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }
}

/// (1.2) A user of the guest, from /etc/passwd and /etc/group.
public struct UserInfo: Equatable, Sendable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    /// Every group the user is in: the primary group first, then those of /etc/group that list
    /// the user, each once (what `id -G` prints).
    public var groups: [UInt32]
    public var home: String
    public var shell: String
    public init(name: String, uid: UInt32, gid: UInt32, groups: [UInt32], home: String, shell: String) {
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home
        self.shell = shell
    }
}
