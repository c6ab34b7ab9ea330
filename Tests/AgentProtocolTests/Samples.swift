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
    // 1.2
    Frame(stream: 5, .spawn(Spawn(Exec(argv: ["sleep", "60"], environment: ["HOME=/home/user"], uid: 1000, gid: 1000,
                                       pty: WindowSize(rows: 1, columns: 1)), flags: [.keep], tag: "server ✓"))),
    Frame(stream: 6, .spawn(Spawn(Exec(argv: ["true"])))),
    Frame(stream: 7, .attach(pid: UInt32.max)),
    // 1.3
    Frame(stream: 6, .spawn(Spawn(Exec(argv: ["sh"]), flags: [.keep], tag: "t", limits: Limits(pids: 5)))),
    Frame(stream: 6, .spawn(Spawn(Exec(argv: ["sh"]), limits: Limits(pids: 0)))),
    Frame(stream: 6, .spawn(Spawn(Exec(argv: ["sh"]), limits: Limits(pids: 7, openFiles: 256)))),
    Frame(stream: 8, .listProcesses),
    Frame(stream: 9, .signalProcess(pid: 42, signal: 64)),
    Frame(stream: 10, .stat(path: "/home/user/ü.txt")),
    Frame(stream: 11, .listDirectory(path: "/", depth: 0)),
    Frame(stream: 11, .listDirectory(path: "/tmp", depth: UInt32.max)),
    Frame(stream: 12, .makeDirectory(MakeDirectory(path: "/a/b/c", mode: 0o7777, uid: 1000, gid: 1001))),
    Frame(stream: 13, .rename(from: "/a", to: "")),
    Frame(stream: 14, .remove(path: "/tmp/x")),
    Frame(stream: 15, .watchDirectory(path: "/home/user", recursive: true)),
    Frame(stream: 15, .watchDirectory(path: "/home/user", recursive: false)),
    Frame(stream: 16, .lookupUser(name: "user")),
]

let sampleFile = EntryInfo(name: "f.txt", path: "/home/user/f.txt", kind: .file, mode: 0o4755, size: UInt64.max, uid: 1000,
                           gid: 1000, owner: "user", group: "user", modifiedSeconds: -5, modifiedNanoseconds: 999_999_999)
let sampleLink = EntryInfo(name: "l", path: "l", kind: .symlink, mode: 0o777, size: 5,
                           symlink: EntryInfo.Symlink(target: "f.txt", resolved: "/home/user/f.txt", targetKind: .file, targetMode: 0o644))
let sampleBrokenLink = EntryInfo(name: "b", path: "/b", kind: .symlink, mode: 0o777,
                                 symlink: EntryInfo.Symlink(target: "/nowhere", resolved: "", targetKind: .other, targetMode: 0))

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
    // 1.2
    Frame(stream: 8, .processes([
        ProcessSummary(pid: 7, tag: "t", argv: ["sh", "-c", "x"], environment: ["A=b"], workingDirectory: "/w", flags: [.pty, .kept, .attached, .exited]),
        ProcessSummary(pid: 8, argv: []),
    ])),
    Frame(stream: 8, .processes([])),
    Frame(stream: 8, .listEnd),
    Frame(stream: 9, .done),
    Frame(stream: 10, .entry(sampleFile)),
    Frame(stream: 10, .entry(sampleLink)),
    Frame(stream: 11, .entries([sampleFile, sampleLink, sampleBrokenLink,
                                EntryInfo(name: "d", path: "/d", kind: .directory, mode: 0o1777), EntryInfo(name: "p", path: "/p", kind: .other, mode: 0)])),
    Frame(stream: 12, .directoryMade(created: true)),
    Frame(stream: 12, .directoryMade(created: false)),
    Frame(stream: 15, .watching),
    Frame(stream: 15, .events([WatchEvent(.create, name: "a"), WatchEvent(.write, name: "a/b"), WatchEvent(.remove, name: ""),
                               WatchEvent(.rename, name: "ü"), WatchEvent(.chmod, name: "x")])),
    Frame(stream: 16, .user(UserInfo(name: "user", uid: 1000, gid: 1000, groups: [1000, 27, 100], home: "/home/user", shell: "/bin/bash"))),
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
