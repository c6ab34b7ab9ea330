extension Frame {
    /// Appends the frame (header and payload) to `out`. Throws `.oversized` and leaves `out`
    /// as it was if the payload would exceed `Wire.maxPayload`.
    public func encode(into out: inout [UInt8]) throws(ProtocolError) {
        if let problem = message.problem { throw problem }
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: Wire.headerSize))
        message.encodePayload(into: &out)
        let length = out.count - start - Wire.headerSize
        guard length <= Wire.maxPayload else {
            out.removeSubrange(start...)
            throw .oversized(length: length, limit: Wire.maxPayload)
        }
        let header = FrameHeader(length: UInt32(length), type: message.type.rawValue, stream: stream)
        out.withUnsafeMutableBytes { header.write(to: UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
    }

    public func encoded() throws(ProtocolError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out)
        return out
    }

    /// Appends a data frame (Stdin, Stdout, Stderr, FileData) straight from a buffer, without
    /// building a `Message` first: the agent's output path.
    public static func encodeData(_ type: MessageType, stream: UInt32, bytes: UnsafeRawBufferPointer,
                                  into out: inout [UInt8]) throws(ProtocolError) {
        precondition(type.isData, "\(type) is not a data frame")
        guard bytes.count <= Wire.maxPayload else { throw .oversized(length: bytes.count, limit: Wire.maxPayload) }
        guard bytes.count > 0 else { throw .invalidValue(type, field: "empty payload") }
        let header = FrameHeader(length: UInt32(bytes.count), type: type.rawValue, stream: stream)
        withUnsafeTemporaryAllocation(byteCount: Wire.headerSize, alignment: 4) { header.write(to: $0) ; out.append(contentsOf: $0) }
        out.append(contentsOf: bytes)
    }
}

extension Message {
    /// What the decoder would reject in this message's values, so that nothing encodes that
    /// cannot be decoded.
    var problem: ProtocolError? {
        switch self {
        case .stdin(let d), .stdout(let d), .stderr(let d), .fileData(let d):
            d.isEmpty ? .invalidValue(type, field: "empty payload") : nil
        case .signal(let s):
            Message.signals.contains(s) ? nil : .invalidValue(.signal, field: "signal number")
        case .reseed(let bytes):
            Message.reseedSizes.contains(bytes.count) ? nil : .invalidValue(.reseed, field: "byte count")
        case .setTime(_, let ns):
            ns < 1_000_000_000 ? nil : .invalidValue(.setTime, field: "nanoseconds")
        case .writeFile(let w):
            if w.mode & ~0o7777 != 0 { .invalidValue(.writeFile, field: "mode") }
            else if !WriteFile.Options.known.isSuperset(of: w.options) { .reservedBits(.writeFile) }
            else { nil }
        case .spawn(let sp):
            !Spawn.Flags.known.isSuperset(of: sp.flags) ? .reservedBits(.spawn)
                : sp.flags.contains(.limits) != (sp.limits != nil) ? .invalidValue(.spawn, field: "limits flag")
                : sp.flags.contains(.openFiles) != ((sp.limits?.openFiles ?? 0) != 0) ? .invalidValue(.spawn, field: "openFiles flag") : nil
        case .signalProcess(_, let s):
            Message.signals.contains(s) ? nil : .invalidValue(.signalProcess, field: "signal number")
        case .makeDirectory(let m):
            m.mode & ~0o7777 != 0 ? .invalidValue(.makeDirectory, field: "mode") : nil
        case .entry(let e):
            e.problem(.entry)
        case .entries(let list):
            list.lazy.compactMap { $0.problem(.entries) }.first
        case .processes(let list):
            list.contains { !ProcessSummary.Flags.known.isSuperset(of: $0.flags) } ? .reservedBits(.processes) : nil
        default:
            nil
        }
    }

    /// How much entropy one Reseed carries.
    static let reseedSizes: ClosedRange<Int> = 1...512

    /// Linux signal numbers, standard and real-time.
    static let signals: ClosedRange<Int32> = 1...64

    func encodePayload(into out: inout [UInt8]) {
        switch self {
        case .hello(let h):
            out.put(Wire.magic)
            out.put(h.version)
            out.put(h.software)
        case .helloAck(let a):
            out.put(Wire.magic)
            out.put(a.version)
            out.put(a.software)
            out.put(a.capabilities.rawValue)
        case .ping(let nonce):
            out.put(nonce)
        case .pong(let p):
            out.put(p.nonce)
            out.put(p.uptimeMillis)
            out.put(p.processes)
        case .shutdown(let grace):
            out.put(grace)
        case .protocolError(let code, let message):
            out.put(code)
            out.put(message)
        case .reseed(let bytes):
            out.put(UInt32(bytes.count))
            out.append(contentsOf: bytes)
        case .reseeded(let e):
            out.put(e)
        case .setTime(let seconds, let ns):
            out.put(seconds)
            out.put(ns)
        case .exec(let e):
            out.put(e)
        case .started(let pid):
            out.put(pid)
        case .failure(let f):
            out.put(UInt32(bitPattern: f.errno))
            out.put(f.message)
        case .stdin(let d), .stdout(let d), .stderr(let d), .fileData(let d):
            out.append(contentsOf: d)
        case .stdinClose, .fileEnd, .cancel:
            break
        case .credit(let channel, let bytes):
            out.put(channel.rawValue)
            out.put(bytes)
        case .resize(let size):
            out.put(size)
        case .signal(let signal):
            out.put(UInt32(bitPattern: signal))
        case .exit(let s):
            switch s.termination {
            case .exited(let code):
                out.put(UInt8(0))
                out.put(UInt32(bitPattern: code))
            case .signaled(let signal):
                out.put(UInt8(1))
                out.put(UInt32(bitPattern: signal))
            }
            out.put(UInt8((s.coreDumped ? 1 : 0) | (s.timedOut ? 2 : 0)))
        case .writeFile(let w):
            out.put(w.path)
            out.put(w.mode)
            out.put(w.uid)
            out.put(w.gid)
            out.put(w.options.rawValue)
        case .readFile(let path):
            out.put(path)
        case .fileInfo(let i):
            out.put(i.mode)
            out.put(i.size)
            out.put(i.uid)
            out.put(i.gid)
        case .fileWritten(let bytes):
            out.put(bytes)
        case .spawn(let sp):
            out.put(sp.exec)
            out.put(sp.flags.rawValue)
            out.put(sp.tag)
            if sp.flags.contains(.limits) { out.put(sp.limits?.pids ?? 0) }
            if sp.flags.contains(.openFiles) { out.put(sp.limits?.openFiles ?? 0) }
        case .attach(let pid):
            out.put(pid)
        case .listProcesses, .listEnd, .done, .watching:
            break
        case .processes(let list):
            out.put(UInt32(truncatingIfNeeded: list.count))
            for p in list {
                out.put(p.pid)
                out.put(p.tag)
                out.put(p.argv)
                out.put(p.environment)
                out.put(p.workingDirectory)
                out.put(p.flags.rawValue)
            }
        case .signalProcess(let pid, let signal):
            out.put(pid)
            out.put(UInt32(bitPattern: signal))
        case .stat(let path), .remove(let path), .lookupUser(let path):
            out.put(path)
        case .entry(let e):
            out.put(e)
        case .listDirectory(let path, let depth):
            out.put(path)
            out.put(depth)
        case .entries(let list):
            out.put(UInt32(truncatingIfNeeded: list.count))
            for e in list { out.put(e) }
        case .makeDirectory(let m):
            out.put(m.path)
            out.put(m.mode)
            out.put(m.uid)
            out.put(m.gid)
        case .directoryMade(let created):
            out.put(UInt8(created ? 1 : 0))
        case .rename(let from, let to):
            out.put(from)
            out.put(to)
        case .watchDirectory(let path, let recursive):
            out.put(path)
            out.put(UInt8(recursive ? 1 : 0))
        case .events(let list):
            out.put(UInt32(truncatingIfNeeded: list.count))
            for e in list {
                out.put(e.kind.rawValue)
                out.put(e.name)
            }
        case .user(let u):
            out.put(u.name)
            out.put(u.uid)
            out.put(u.gid)
            out.put(UInt32(truncatingIfNeeded: u.groups.count))
            for g in u.groups { out.put(g) }
            out.put(u.home)
            out.put(u.shell)
        }
    }
}

extension [UInt8] {
    mutating func put<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// u32 byte count, then the UTF-8 bytes.
    mutating func put(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            put(UInt32(truncatingIfNeeded: utf8.count))
            append(contentsOf: utf8)
        }
    }

    mutating func put(_ version: Version) {
        put(version.major)
        put(version.minor)
    }

    mutating func put(_ size: WindowSize) {
        put(size.rows)
        put(size.columns)
    }

    mutating func put(_ strings: [String]) {
        put(UInt32(truncatingIfNeeded: strings.count))
        for s in strings { put(s) }
    }

    mutating func put(_ e: Exec) {
        put(e.argv)
        put(e.environment)
        put(e.workingDirectory)
        put(e.uid)
        put(e.gid)
        put(UInt32(truncatingIfNeeded: e.groups.count))
        for g in e.groups { put(g) }
        if let size = e.pty {
            put(UInt8(1))
            put(size)
        } else {
            put(UInt8(0))
        }
        put(e.timeoutMillis)
    }

    mutating func put(_ e: EntryInfo) {
        put(e.name)
        put(e.path)
        put(e.kind.rawValue)
        put(e.mode)
        put(e.size)
        put(e.uid)
        put(e.gid)
        put(e.owner)
        put(e.group)
        put(e.modifiedSeconds)
        put(e.modifiedNanoseconds)
        if let link = e.symlink {
            put(UInt8(1))
            put(link.target)
            put(link.resolved)
            put(link.targetKind.rawValue)
            put(link.targetMode)
        } else {
            put(UInt8(0))
        }
    }
}

extension EntryInfo {
    /// What the decoder would reject, reported as an error of a frame of `type`.
    func problem(_ type: MessageType) -> ProtocolError? {
        if mode & ~0o7777 != 0 { return .invalidValue(type, field: "mode") }
        if modifiedNanoseconds >= 1_000_000_000 { return .invalidValue(type, field: "nanoseconds") }
        if (kind == .symlink) != (symlink != nil) { return .invalidValue(type, field: "symlink presence byte") }
        if let link = symlink, link.targetMode & ~0o7777 != 0 { return .invalidValue(type, field: "mode") }
        return nil
    }
}
