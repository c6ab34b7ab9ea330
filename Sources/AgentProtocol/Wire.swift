/// Constants and the frame header of the host-guest agent protocol. The format is written down
/// in docs/agent-protocol.md; this file and that document change together.
public enum Wire {
    /// "KILN" read as a little-endian UInt32; the first field of Hello and HelloAck.
    public static let magic: UInt32 = 0x4E4C_494B
    /// Bytes before every payload: length (4), type (1), flags (1), reserved (2), stream (4).
    public static let headerSize = 12
    /// Largest payload a peer may send or must accept. Bounds what a decoder buffers per frame.
    public static let maxPayload = 1 << 20
    /// Credit each receiver grants per data channel when a stream opens.
    public static let initialWindow: UInt32 = 1 << 20
    /// The version this build speaks.
    public static let version = Version(major: 1, minor: 4)
}

/// Protocol version: peers talk only when majors are equal; the session uses the smaller minor.
public struct Version: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var major: UInt16
    public var minor: UInt16
    public init(major: UInt16, minor: UInt16) {
        self.major = major
        self.minor = minor
    }
    public var description: String { "\(major).\(minor)" }
}

/// Which end of the connection sent a frame. A decoder is told whose frames it reads.
public enum Side: Sendable {
    case host, agent
}

/// The one-byte type field of the frame header.
public enum MessageType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    // Connection (stream 0).
    case hello = 0x01
    case helloAck = 0x02
    case ping = 0x03
    case pong = 0x04
    case shutdown = 0x05
    case protocolError = 0x06
    case reseed = 0x07
    case reseeded = 0x08
    case setTime = 0x09
    // Processes.
    case exec = 0x10
    case started = 0x11
    case failure = 0x12
    case stdin = 0x13
    case stdinClose = 0x14
    case stdout = 0x15
    case stderr = 0x16
    case credit = 0x17
    case resize = 0x18
    case signal = 0x19
    case exit = 0x1A
    // Files.
    case writeFile = 0x20
    case readFile = 0x21
    case fileInfo = 0x22
    case fileData = 0x23
    case fileEnd = 0x24
    case fileWritten = 0x25
    case cancel = 0x26
    // Processes that outlive the connection (1.2).
    case spawn = 0x1B
    case attach = 0x1C
    case listProcesses = 0x1D
    case processes = 0x1E
    case signalProcess = 0x1F
    // Filesystem operations (1.2).
    case stat = 0x30
    case entry = 0x31
    case listDirectory = 0x32
    case entries = 0x33
    case listEnd = 0x34
    case makeDirectory = 0x35
    case directoryMade = 0x36
    case rename = 0x37
    case remove = 0x38
    case done = 0x39
    case watchDirectory = 0x3A
    case watching = 0x3B
    case events = 0x3C
    // Users (1.2).
    case lookupUser = 0x40
    case user = 0x41

    /// Connection messages travel on stream 0, everything else on a stream the host opened.
    public var isConnection: Bool { rawValue < 0x10 }

    /// Data frames carry raw bytes as their whole payload and count against flow-control credit.
    public var isData: Bool {
        switch self {
        case .stdin, .stdout, .stderr, .fileData: true
        default: false
        }
    }

    /// Who may send this type; nil when both sides may.
    public var sender: Side? {
        switch self {
        case .hello, .ping, .shutdown, .reseed, .setTime, .exec, .stdin, .stdinClose, .resize, .signal,
             .writeFile, .readFile, .cancel, .spawn, .attach, .listProcesses, .signalProcess, .stat, .listDirectory,
             .makeDirectory, .rename, .remove, .watchDirectory, .lookupUser: .host
        case .helloAck, .pong, .reseeded, .started, .failure, .stdout, .stderr, .exit, .fileInfo, .fileWritten,
             .processes, .entry, .entries, .listEnd, .directoryMade, .done, .watching, .events, .user: .agent
        case .protocolError, .credit, .fileData, .fileEnd: nil
        }
    }

    public var description: String {
        switch self {
        case .hello: "Hello"
        case .helloAck: "HelloAck"
        case .ping: "Ping"
        case .pong: "Pong"
        case .shutdown: "Shutdown"
        case .protocolError: "ProtocolError"
        case .reseed: "Reseed"
        case .reseeded: "Reseeded"
        case .setTime: "SetTime"
        case .exec: "Exec"
        case .started: "Started"
        case .failure: "Failure"
        case .stdin: "Stdin"
        case .stdinClose: "StdinClose"
        case .stdout: "Stdout"
        case .stderr: "Stderr"
        case .credit: "Credit"
        case .resize: "Resize"
        case .signal: "Signal"
        case .exit: "Exit"
        case .writeFile: "WriteFile"
        case .readFile: "ReadFile"
        case .fileInfo: "FileInfo"
        case .fileData: "FileData"
        case .fileEnd: "FileEnd"
        case .fileWritten: "FileWritten"
        case .cancel: "Cancel"
        case .spawn: "Spawn"
        case .attach: "Attach"
        case .listProcesses: "ListProcesses"
        case .processes: "Processes"
        case .signalProcess: "SignalProcess"
        case .stat: "Stat"
        case .entry: "Entry"
        case .listDirectory: "ListDirectory"
        case .entries: "Entries"
        case .listEnd: "ListEnd"
        case .makeDirectory: "MakeDirectory"
        case .directoryMade: "DirectoryMade"
        case .rename: "Rename"
        case .remove: "Remove"
        case .done: "Done"
        case .watchDirectory: "WatchDirectory"
        case .watching: "Watching"
        case .events: "Events"
        case .lookupUser: "LookupUser"
        case .user: "User"
        }
    }
}

/// The fixed 12-byte header, little-endian. Public so that a sender can reserve the header,
/// read(2) data straight after it and fill the header in last.
public struct FrameHeader: Equatable, Sendable {
    public var length: UInt32
    public var type: UInt8
    public var flags: UInt8
    public var reserved: UInt16
    public var stream: UInt32

    public init(length: UInt32, type: UInt8, flags: UInt8 = 0, reserved: UInt16 = 0, stream: UInt32) {
        self.length = length
        self.type = type
        self.flags = flags
        self.reserved = reserved
        self.stream = stream
    }

    /// Writes the header into the first `Wire.headerSize` bytes of `buffer`.
    public func write(to buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Wire.headerSize)
        buffer.storeBytes(of: length.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: type, toByteOffset: 4, as: UInt8.self)
        buffer.storeBytes(of: flags, toByteOffset: 5, as: UInt8.self)
        buffer.storeBytes(of: reserved.littleEndian, toByteOffset: 6, as: UInt16.self)
        buffer.storeBytes(of: stream.littleEndian, toByteOffset: 8, as: UInt32.self)
    }

    /// Reads a header from the first `Wire.headerSize` bytes of `buffer`.
    public init(from buffer: UnsafeRawBufferPointer) {
        precondition(buffer.count >= Wire.headerSize)
        length = UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        type = buffer[4]
        flags = buffer[5]
        reserved = UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        stream = UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
    }
}
