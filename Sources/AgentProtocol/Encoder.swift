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
            out.put(UInt32(truncatingIfNeeded: e.argv.count))
            for a in e.argv { out.put(a) }
            out.put(UInt32(truncatingIfNeeded: e.environment.count))
            for v in e.environment { out.put(v) }
            out.put(e.workingDirectory)
            out.put(e.uid)
            out.put(e.gid)
            out.put(UInt32(truncatingIfNeeded: e.groups.count))
            for g in e.groups { out.put(g) }
            if let size = e.pty {
                out.put(UInt8(1))
                out.put(size)
            } else {
                out.put(UInt8(0))
            }
            out.put(e.timeoutMillis)
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
}
