/// Turns a byte stream from one peer into frames. Feed it chunks split anywhere; take frames
/// out with `next()`. Each payload byte is copied once, from the fed chunk into the frame's
/// payload array, which a data frame then hands over as its `[UInt8]` without another copy.
///
/// The first violation stops the decoder: frames decoded before it are still returned by
/// `next()`, then `next()` throws the error, and keeps throwing it. The caller sends
/// `error.frame` (unless the error is `.remote`) and closes the connection.
public struct FrameDecoder: Sendable {
    /// Whose frames this decoder reads: a type only the other side may send is `.unexpected`.
    public let sender: Side
    public let maxPayload: Int

    private var header: [UInt8] = []
    private var current: (type: MessageType, length: Int, stream: UInt32)?
    private var payload: [UInt8] = []
    private var ready: [Frame] = []
    private var readyIndex = 0
    private var failure: ProtocolError?

    public init(from sender: Side, maxPayload: Int = Wire.maxPayload) {
        precondition(maxPayload <= Wire.maxPayload)
        self.sender = sender
        self.maxPayload = maxPayload
        header.reserveCapacity(Wire.headerSize)
    }

    /// Consumes all of `bytes`. Never throws: errors surface from `next()` in stream order.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        let input = bytes.assumingMemoryBound(to: UInt8.self)
        var i = 0
        while i < input.count, failure == nil {
            if let frame = current {
                let n = min(frame.length - payload.count, input.count - i)
                payload.append(contentsOf: UnsafeBufferPointer(rebasing: input[i..<(i + n)]))
                i += n
                if payload.count == frame.length { complete() }
            } else {
                let n = min(Wire.headerSize - header.count, input.count - i)
                header.append(contentsOf: UnsafeBufferPointer(rebasing: input[i..<(i + n)]))
                i += n
                if header.count == Wire.headerSize { begin() }
            }
        }
    }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    public mutating func feed(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// The next complete frame, nil if more bytes are needed.
    public mutating func next() throws(ProtocolError) -> Frame? {
        if readyIndex < ready.count {
            let frame = ready[readyIndex]
            readyIndex += 1
            if readyIndex == ready.count {
                ready.removeAll(keepingCapacity: true)
                readyIndex = 0
            }
            return frame
        }
        if let failure { throw failure }
        return nil
    }

    /// Call when the peer closed the connection: throws if it closed inside a frame.
    public func finish() throws(ProtocolError) {
        if let failure { throw failure }
        if let frame = current { throw .truncated(frame.type) }
        if !header.isEmpty { throw .endedInsideHeader(count: header.count) }
    }

    private mutating func begin() {
        let h = header.withUnsafeBytes { FrameHeader(from: $0) }
        header.removeAll(keepingCapacity: true)
        guard let type = MessageType(rawValue: h.type) else { return fail(.unknownType(h.type)) }
        guard h.flags == 0, h.reserved == 0 else { return fail(.reservedBits(type)) }
        guard type.isConnection == (h.stream == 0) else { return fail(.wrongStream(type, stream: h.stream)) }
        if let only = type.sender, only != sender { return fail(.unexpected(type)) }
        guard h.length <= maxPayload else { return fail(.oversized(length: Int(h.length), limit: maxPayload)) }
        let length = Int(h.length)
        if type.isData {
            guard length > 0 else { return fail(.invalidValue(type, field: "empty payload")) }
            payload = []
            payload.reserveCapacity(length)
        }
        current = (type, length, h.stream)
        if length == 0 { complete() }
    }

    private mutating func complete() {
        guard let frame = current else { return }
        current = nil
        if frame.type.isData {
            var data: [UInt8] = []
            swap(&data, &payload)
            let message: Message = switch frame.type {
            case .stdin: .stdin(data)
            case .stdout: .stdout(data)
            case .stderr: .stderr(data)
            default: .fileData(data)
            }
            ready.append(Frame(stream: frame.stream, message))
            return
        }
        do throws(ProtocolError) {
            var reader = PayloadReader(payload, type: frame.type)
            let message = try reader.message(from: sender)
            try reader.end()
            ready.append(Frame(stream: frame.stream, message))
        } catch {
            fail(error)
        }
        payload.removeAll(keepingCapacity: true)
    }

    private mutating func fail(_ error: ProtocolError) {
        failure = error
        current = nil
        payload = []
    }
}

/// Reads the fields of one control payload; every read checks the bytes left.
struct PayloadReader {
    let bytes: [UInt8]
    let type: MessageType
    var offset = 0

    init(_ bytes: [UInt8], type: MessageType) {
        self.bytes = bytes
        self.type = type
    }

    var remaining: Int { bytes.count - offset }

    mutating func int<T: FixedWidthInteger>(_: T.Type = T.self) throws(ProtocolError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated(type) }
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        offset += size
        return T(littleEndian: value)
    }

    mutating func string() throws(ProtocolError) -> String {
        let count = Int(try int(UInt32.self))
        guard remaining >= count else { throw .truncated(type) }
        guard let s = String(validating: bytes[offset..<(offset + count)], as: UTF8.self) else {
            throw .invalidUTF8(type)
        }
        offset += count
        return s
    }

    /// A list's element count, checked against the bytes left so that a huge count cannot make
    /// the caller reserve memory the payload could never fill.
    mutating func count(elementSize: Int) throws(ProtocolError) -> Int {
        let count = Int(try int(UInt32.self))
        guard count <= remaining / elementSize else { throw .truncated(type) }
        return count
    }

    mutating func strings() throws(ProtocolError) -> [String] {
        let n = try count(elementSize: 4)
        var list: [String] = []
        list.reserveCapacity(n)
        for _ in 0..<n { list.append(try string()) }
        return list
    }

    mutating func u32s() throws(ProtocolError) -> [UInt32] {
        let n = try count(elementSize: 4)
        var list: [UInt32] = []
        list.reserveCapacity(n)
        for _ in 0..<n { list.append(try int()) }
        return list
    }

    mutating func execFields() throws(ProtocolError) -> Exec {
        let argv = try strings()
        let environment = try strings()
        let directory = try string()
        let uid: UInt32 = try int()
        let gid: UInt32 = try int()
        let groups = try u32s()
        let pty: WindowSize? = switch try int(UInt8.self) {
        case 0: nil
        case 1: try windowSize()
        default: throw .invalidValue(type, field: "pty presence byte")
        }
        return Exec(argv: argv, environment: environment, workingDirectory: directory,
                    uid: uid, gid: gid, groups: groups, pty: pty, timeoutMillis: try int())
    }

    mutating func mode() throws(ProtocolError) -> UInt32 {
        let mode: UInt32 = try int()
        guard mode & ~0o7777 == 0 else { throw .invalidValue(type, field: "mode") }
        return mode
    }

    mutating func kind() throws(ProtocolError) -> EntryInfo.Kind {
        guard let kind = EntryInfo.Kind(rawValue: try int()) else { throw .invalidValue(type, field: "entry kind") }
        return kind
    }

    /// Fewest bytes an encoded EntryInfo takes: four empty strings and the fixed fields.
    static let entryInfoMinimum = 4 * 4 + 1 + 4 + 8 + 4 + 4 + 8 + 4 + 1

    mutating func entryInfo() throws(ProtocolError) -> EntryInfo {
        let name = try string()
        let path = try string()
        let kind = try kind()
        let mode = try mode()
        let size: UInt64 = try int()
        let uid: UInt32 = try int()
        let gid: UInt32 = try int()
        let owner = try string()
        let group = try string()
        let seconds: Int64 = try int()
        let nanoseconds: UInt32 = try int()
        guard nanoseconds < 1_000_000_000 else { throw .invalidValue(type, field: "nanoseconds") }
        let symlink: EntryInfo.Symlink? = switch try int(UInt8.self) {
        case 0: nil
        case 1: EntryInfo.Symlink(target: try string(), resolved: try string(), targetKind: try self.kind(), targetMode: try self.mode())
        default: throw .invalidValue(type, field: "symlink presence byte")
        }
        // A symlink always says where it leads; nothing else does.
        guard (kind == .symlink) == (symlink != nil) else { throw .invalidValue(type, field: "symlink presence byte") }
        return EntryInfo(name: name, path: path, kind: kind, mode: mode, size: size, uid: uid, gid: gid, owner: owner,
                         group: group, modifiedSeconds: seconds, modifiedNanoseconds: nanoseconds, symlink: symlink)
    }

    /// A flag byte whose only named bit is bit 0.
    mutating func flag() throws(ProtocolError) -> Bool {
        let byte: UInt8 = try int()
        guard byte & ~1 == 0 else { throw .reservedBits(type) }
        return byte == 1
    }

    mutating func version() throws(ProtocolError) -> Version {
        Version(major: try int(), minor: try int())
    }

    mutating func windowSize() throws(ProtocolError) -> WindowSize {
        WindowSize(rows: try int(), columns: try int())
    }

    func end() throws(ProtocolError) {
        guard remaining == 0 else { throw .trailingBytes(type, count: remaining) }
    }

    mutating func message(from sender: Side) throws(ProtocolError) -> Message {
        switch type {
        case .hello:
            let magic: UInt32 = try int()
            guard magic == Wire.magic else { throw .badMagic(magic) }
            return .hello(Hello(version: try version(), software: try string()))
        case .helloAck:
            let magic: UInt32 = try int()
            guard magic == Wire.magic else { throw .badMagic(magic) }
            return .helloAck(HelloAck(version: try version(), software: try string(),
                                      capabilities: Capabilities(rawValue: try int())))
        case .ping:
            return .ping(nonce: try int())
        case .pong:
            return .pong(Pong(nonce: try int(), uptimeMillis: try int(), processes: try int()))
        case .shutdown:
            return .shutdown(graceMillis: try int())
        case .protocolError:
            return .protocolError(code: try int(), message: try string())
        case .reseed:
            let n = try count(elementSize: 1)
            guard Message.reseedSizes.contains(n) else { throw .invalidValue(.reseed, field: "byte count") }
            defer { offset += n }
            return .reseed(Array(bytes[offset..<(offset + n)]))
        case .reseeded:
            return .reseeded(errno: try int())
        case .setTime:
            let seconds: Int64 = try int()
            let nanoseconds: UInt32 = try int()
            guard nanoseconds < 1_000_000_000 else { throw .invalidValue(.setTime, field: "nanoseconds") }
            return .setTime(seconds: seconds, nanoseconds: nanoseconds)
        case .exec:
            return .exec(try execFields())
        case .started:
            return .started(pid: try int())
        case .failure:
            return .failure(Failure(errno: try int(), message: try string()))
        case .credit:
            guard let channel = Channel(rawValue: try int()) else { throw .invalidValue(.credit, field: "channel") }
            // Credit comes from the receiver of the channel's data.
            let granted: Bool = switch channel {
            case .stdin: sender == .agent
            case .stdout, .stderr: sender == .host
            case .file: true
            }
            guard granted else { throw .invalidValue(.credit, field: "channel") }
            return .credit(channel, bytes: try int())
        case .resize:
            return .resize(try windowSize())
        case .signal:
            let signal: Int32 = try int()
            guard Message.signals.contains(signal) else { throw .invalidValue(.signal, field: "signal number") }
            return .signal(signal)
        case .exit:
            let kind: UInt8 = try int()
            let value: Int32 = try int()
            let flags: UInt8 = try int()
            guard flags & ~3 == 0 else { throw .reservedBits(.exit) }
            let termination: ExitStatus.Termination = switch kind {
            case 0: .exited(code: value)
            case 1: .signaled(signal: value)
            default: throw .invalidValue(.exit, field: "termination kind")
            }
            return .exit(ExitStatus(termination, coreDumped: flags & 1 != 0, timedOut: flags & 2 != 0))
        case .writeFile:
            let path = try string()
            let mode: UInt32 = try int()
            guard mode & ~0o7777 == 0 else { throw .invalidValue(.writeFile, field: "mode") }
            let uid: UInt32 = try int()
            let gid: UInt32 = try int()
            let options = WriteFile.Options(rawValue: try int())
            guard WriteFile.Options.known.isSuperset(of: options) else { throw .reservedBits(.writeFile) }
            return .writeFile(WriteFile(path: path, mode: mode, uid: uid, gid: gid, options: options))
        case .readFile:
            return .readFile(path: try string())
        case .fileInfo:
            return .fileInfo(FileInfo(mode: try int(), size: try int(), uid: try int(), gid: try int()))
        case .fileWritten:
            return .fileWritten(bytes: try int())
        case .stdinClose:
            return .stdinClose
        case .fileEnd:
            return .fileEnd
        case .cancel:
            return .cancel
        case .spawn:
            let exec = try execFields()
            let flags = Spawn.Flags(rawValue: try int())
            guard Spawn.Flags.known.isSuperset(of: flags) else { throw .reservedBits(.spawn) }
            let tag = try string()
            // openFiles continues the Limits record: it never comes alone, and never as 0 (the
            // encoder leaves the bit out then), so that every Spawn has one encoding.
            if flags.contains(.openFiles) && !flags.contains(.limits) { throw .invalidValue(.spawn, field: "openFiles flag") }
            var limits = flags.contains(.limits) ? Limits(pids: try int()) : nil
            if flags.contains(.openFiles) {
                let n: UInt32 = try int()
                guard n != 0 else { throw .invalidValue(.spawn, field: "openFiles") }
                limits?.openFiles = n
            }
            return .spawn(Spawn(exec, flags: flags, tag: tag, limits: limits))
        case .attach:
            return .attach(pid: try int())
        case .listProcesses:
            return .listProcesses
        case .processes:
            // pid, four empty strings or lists, flags.
            let n = try count(elementSize: 4 + 4 * 4 + 1)
            var list: [ProcessSummary] = []
            list.reserveCapacity(n)
            for _ in 0..<n {
                let pid: UInt32 = try int()
                let tag = try string()
                let argv = try strings()
                let environment = try strings()
                let directory = try string()
                let flags = ProcessSummary.Flags(rawValue: try int())
                guard ProcessSummary.Flags.known.isSuperset(of: flags) else { throw .reservedBits(.processes) }
                list.append(ProcessSummary(pid: pid, tag: tag, argv: argv, environment: environment,
                                           workingDirectory: directory, flags: flags))
            }
            return .processes(list)
        case .signalProcess:
            let pid: UInt32 = try int()
            let signal: Int32 = try int()
            guard Message.signals.contains(signal) else { throw .invalidValue(.signalProcess, field: "signal number") }
            return .signalProcess(pid: pid, signal: signal)
        case .stat:
            return .stat(path: try string())
        case .entry:
            return .entry(try entryInfo())
        case .listDirectory:
            return .listDirectory(path: try string(), depth: try int())
        case .entries:
            let n = try count(elementSize: PayloadReader.entryInfoMinimum)
            var list: [EntryInfo] = []
            list.reserveCapacity(n)
            for _ in 0..<n { list.append(try entryInfo()) }
            return .entries(list)
        case .listEnd:
            return .listEnd
        case .makeDirectory:
            return .makeDirectory(MakeDirectory(path: try string(), mode: try mode(), uid: try int(), gid: try int()))
        case .directoryMade:
            return .directoryMade(created: try flag())
        case .rename:
            return .rename(from: try string(), to: try string())
        case .remove:
            return .remove(path: try string())
        case .done:
            return .done
        case .watchDirectory:
            return .watchDirectory(path: try string(), recursive: try flag())
        case .watching:
            return .watching
        case .events:
            let n = try count(elementSize: 1 + 4)
            var list: [WatchEvent] = []
            list.reserveCapacity(n)
            for _ in 0..<n {
                guard let kind = WatchEvent.Kind(rawValue: try int()) else { throw .invalidValue(.events, field: "event kind") }
                list.append(WatchEvent(kind, name: try string()))
            }
            return .events(list)
        case .lookupUser:
            return .lookupUser(name: try string())
        case .user:
            return .user(UserInfo(name: try string(), uid: try int(), gid: try int(), groups: try u32s(),
                                  home: try string(), shell: try string()))
        case .stdin, .stdout, .stderr, .fileData:
            preconditionFailure("data frames do not go through PayloadReader")
        }
    }
}
