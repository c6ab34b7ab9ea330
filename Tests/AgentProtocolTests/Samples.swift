@testable import AgentProtocol

/// At least one frame of every message type, with edge values, tagged with the side that sends it.
let hostFrames: [Frame] = [
    Frame(stream: 0, .hello(Hello(software: "kiln 0.1 ✓"))),
    Frame(stream: 0, .ping(nonce: 0x0102_0304_0506_0708)),
    Frame(stream: 0, .shutdown(graceMillis: 2500)),
    Frame(stream: 0, .reseed([0xDE, 0xAD, 0xBE, 0xEF])),
    Frame(stream: 0, .setTime(seconds: 1_795_000_000, nanoseconds: 999_999_999)),
    Frame(stream: 0, .setTime(seconds: -1, nanoseconds: 0)),
    Frame(stream: 0, .reseed([UInt8](repeating: 7, count: 512))),
    Frame(stream: 0, .protocolError(code: 5, message: "Ping frame ends inside a field")),
    Frame(stream: 1, .exec(Exec(argv: ["/bin/sh", "-c", "echo hi; exit 3"], environment: ["PATH=/bin", "LANG=C.UTF-8"],
                                workingDirectory: "/tmp", uid: 1000, gid: 100, groups: [10, 20],
                                pty: WindowSize(rows: 24, columns: 80), timeoutMillis: 30_000))),
    Frame(stream: 2, .exec(Exec(argv: ["true"]))),
    Frame(stream: 1, .stdin(Array("input\n".utf8))),
    Frame(stream: 1, .stdinClose),
    Frame(stream: 1, .credit(.stdout, bytes: 65536)),
    Frame(stream: 1, .credit(.stderr, bytes: UInt32.max)),
    Frame(stream: 1, .resize(WindowSize(rows: 50, columns: 132))),
    Frame(stream: 1, .signal(15)),
    Frame(stream: 3, .writeFile(WriteFile(path: "/etc/motd", mode: 0o4755, uid: 0, gid: 0, options: [.createParents, .exclusive]))),
    Frame(stream: 3, .fileData([0, 1, 2, 255])),
    Frame(stream: 3, .fileEnd),
    Frame(stream: 4, .readFile(path: "/proc/cpuinfo")),
    Frame(stream: 4, .credit(.file, bytes: 1 << 20)),
    Frame(stream: 4, .cancel),
    Frame(stream: UInt32.max, .readFile(path: "")),
]

let agentFrames: [Frame] = [
    Frame(stream: 0, .helloAck(HelloAck(software: "kiln-agent 0.1", capabilities: [.pty, .setIDs]))),
    Frame(stream: 0, .pong(Pong(nonce: 7, uptimeMillis: 123_456, processes: 2))),
    Frame(stream: 0, .reseeded(errno: 0)),
    Frame(stream: 0, .reseeded(errno: 1)),
    Frame(stream: 0, .protocolError(code: 999, message: "")),
    Frame(stream: 1, .started(pid: 42)),
    Frame(stream: 1, .credit(.stdin, bytes: 4096)),
    Frame(stream: 1, .stdout(Array(repeating: 0x41, count: 70_000))),
    Frame(stream: 1, .stderr(Array("warn\n".utf8))),
    Frame(stream: 1, .exit(ExitStatus(.exited(code: 3)))),
    Frame(stream: 2, .exit(ExitStatus(.signaled(signal: 9), coreDumped: true, timedOut: true))),
    Frame(stream: 2, .failure(Failure(errno: 2, message: "no such file: /bin/nope"))),
    Frame(stream: 3, .fileWritten(bytes: 4)),
    Frame(stream: 4, .fileInfo(FileInfo(mode: 0o100644, size: UInt64.max, uid: 1, gid: 2))),
    Frame(stream: 4, .fileData([9])),
    Frame(stream: 4, .credit(.file, bytes: 1)),
    Frame(stream: 4, .fileEnd),
]

func encode(_ frames: [Frame]) throws(ProtocolError) -> [UInt8] {
    var out: [UInt8] = []
    for f in frames { try f.encode(into: &out) }
    return out
}

/// Feeds `chunks` and returns every frame, or throws the first error (also checking `finish`).
func decode(_ chunks: [ArraySlice<UInt8>], from side: Side) throws(ProtocolError) -> [Frame] {
    var decoder = FrameDecoder(from: side)
    var frames: [Frame] = []
    for chunk in chunks {
        decoder.feed(chunk)
        while let f = try decoder.next() { frames.append(f) }
    }
    try decoder.finish()
    return frames
}

func decode(_ bytes: [UInt8], from side: Side) throws(ProtocolError) -> [Frame] {
    try decode([bytes[...]], from: side)
}

/// A frame built by hand, to say things the encoder refuses to.
func raw(_ type: UInt8, stream: UInt32 = 0, flags: UInt8 = 0, reserved: UInt16 = 0,
         length: UInt32? = nil, _ payload: [UInt8] = []) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Wire.headerSize)
    let header = FrameHeader(length: length ?? UInt32(payload.count), type: type, flags: flags,
                             reserved: reserved, stream: stream)
    out.withUnsafeMutableBytes { header.write(to: $0) }
    return out + payload
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    withUnsafeBytes(of: v.littleEndian) { Array($0) }
}

func lstring(_ bytes: [UInt8]) -> [UInt8] { le(UInt32(bytes.count)) + bytes }

/// SplitMix64: deterministic randomness so a failing seed can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
