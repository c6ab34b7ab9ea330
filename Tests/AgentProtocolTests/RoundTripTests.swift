import Glibc
import Testing
@testable import AgentProtocol

@Suite struct RoundTripTests {
    @Test func samplesCoverEveryMessageType() {
        let covered = Set((hostFrames + agentFrames).map(\.message.type.rawValue))
        #expect(covered == Set(MessageType.allCases.map(\.rawValue)))
    }

    @Test func everyHostMessageRoundTrips() throws {
        for frame in hostFrames {
            #expect(try decode(frame.encoded(), from: .host) == [frame])
        }
    }

    @Test func everyAgentMessageRoundTrips() throws {
        for frame in agentFrames {
            #expect(try decode(frame.encoded(), from: .agent) == [frame])
        }
    }

    /// Pins the byte layout that docs/agent-protocol.md describes.
    @Test func pingAndHelloBytesMatchTheDocument() throws {
        #expect(try Frame(stream: 0, .ping(nonce: 0x0102_0304_0506_0708)).encoded() ==
            [8, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1])
        #expect(try Frame(stream: 0, .hello(Hello(software: "k"))).encoded() ==
            [13, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0] + Array("KILN".utf8) + [1, 0, 4, 0, 1, 0, 0, 0, 0x6B])
        #expect(try Frame(stream: 7, .stdout([0xAA])).encoded() == [1, 0, 0, 0, 0x15, 0, 0, 0, 7, 0, 0, 0, 0xAA])
    }

    @Test func dataFramesEncodeStraightFromABuffer() throws {
        let bytes: [UInt8] = Array(0..<200)
        var direct: [UInt8] = []
        var failure: ProtocolError?
        bytes.withUnsafeBytes { buffer in
            do throws(ProtocolError) {
                try Frame.encodeData(.stdout, stream: 9, bytes: buffer, into: &direct)
            } catch {
                failure = error
            }
        }
        #expect(failure == nil)
        #expect(direct == (try Frame(stream: 9, .stdout(bytes)).encoded()))
    }

    @Test func aStreamSplitAtEveryByteDecodesTheSame() throws {
        for (frames, side) in [(hostFrames, Side.host), (agentFrames.filter { $0.message.type != .stdout }, .agent)] {
            let bytes = try encode(frames)
            for cut in 0...bytes.count {
                #expect(try decode([bytes[..<cut], bytes[cut...]], from: side) == frames)
            }
            #expect(try decode(bytes.indices.map { bytes[$0...$0] }, from: side) == frames)
        }
    }

    @Test func randomChunkingDecodesTheSame() throws {
        var rng = SplitMix(state: 1)
        let bytes = try encode(agentFrames)
        for _ in 0..<200 {
            var chunks: [ArraySlice<UInt8>] = []
            var i = 0
            while i < bytes.count {
                let n = Int.random(in: 1...4096, using: &rng)
                chunks.append(bytes[i..<min(i + n, bytes.count)])
                i += n
            }
            #expect(try decode(chunks, from: .agent) == agentFrames)
        }
    }

    @Test func largestPayloadPassesAndOneMoreByteIsRefused() throws {
        let max = Frame(stream: 1, .stdout(Array(repeating: 1, count: Wire.maxPayload)))
        #expect(try decode(max.encoded(), from: .agent) == [max])
        var out: [UInt8] = [1, 2, 3]
        #expect(throws: ProtocolError.oversized(length: Wire.maxPayload + 1, limit: Wire.maxPayload)) {
            try Frame(stream: 1, .stdout(Array(repeating: 1, count: Wire.maxPayload + 1))).encode(into: &out)
        }
        #expect(out == [1, 2, 3])
        let hugeArgv = Exec(argv: Array(repeating: String(repeating: "x", count: 1000), count: 1100))
        #expect(throws: ProtocolError.self) { try Frame(stream: 1, .exec(hugeArgv)).encoded() }
    }

    @Test func theEncoderRefusesWhatTheDecoderWould() {
        #expect(throws: ProtocolError.invalidValue(.stdout, field: "empty payload")) {
            try Frame(stream: 1, .stdout([])).encoded()
        }
        #expect(throws: ProtocolError.invalidValue(.signal, field: "signal number")) {
            try Frame(stream: 1, .signal(0)).encoded()
        }
        #expect(throws: ProtocolError.invalidValue(.writeFile, field: "mode")) {
            try Frame(stream: 1, .writeFile(WriteFile(path: "/x", mode: 0o100644))).encoded()
        }
        #expect(throws: ProtocolError.reservedBits(.writeFile)) {
            try Frame(stream: 1, .writeFile(WriteFile(path: "/x", mode: 0o644, options: .init(rawValue: 0x80)))).encoded()
        }
        #expect(throws: ProtocolError.reservedBits(.spawn)) {
            try Frame(stream: 1, .spawn(Spawn(Exec(argv: ["x"]), flags: .init(rawValue: 8)))).encoded()
        }
        // The limits bit and the record go together; Spawn's init sets the bit from `limits`.
        var unset = Spawn(Exec(argv: ["x"]))
        unset.flags.insert(.limits)
        #expect(throws: ProtocolError.invalidValue(.spawn, field: "limits flag")) { try Frame(stream: 1, .spawn(unset)).encoded() }
        #expect(Spawn(Exec(argv: ["x"]), flags: .limits).flags.isEmpty)
        // (1.4) So do the openFiles bit and a non-zero openFiles.
        var stray = Spawn(Exec(argv: ["x"]), limits: Limits(pids: 3))
        stray.flags.insert(.openFiles)
        #expect(throws: ProtocolError.invalidValue(.spawn, field: "openFiles flag")) { try Frame(stream: 1, .spawn(stray)).encoded() }
        #expect(Spawn(Exec(argv: ["x"]), limits: Limits(openFiles: 9)).flags == [.limits, .openFiles])
        #expect(Spawn(Exec(argv: ["x"]), flags: .openFiles, limits: Limits(pids: 3)).flags == [.limits])
        #expect(throws: ProtocolError.invalidValue(.signalProcess, field: "signal number")) {
            try Frame(stream: 1, .signalProcess(pid: 1, signal: 65)).encoded()
        }
        #expect(throws: ProtocolError.invalidValue(.makeDirectory, field: "mode")) {
            try Frame(stream: 1, .makeDirectory(MakeDirectory(path: "/x", mode: 0o40755))).encoded()
        }
        #expect(throws: ProtocolError.invalidValue(.entry, field: "symlink presence byte")) {
            try Frame(stream: 1, .entry(EntryInfo(name: "l", path: "/l", kind: .symlink, mode: 0o777))).encoded()
        }
        #expect(throws: ProtocolError.invalidValue(.entries, field: "nanoseconds")) {
            try Frame(stream: 1, .entries([EntryInfo(name: "f", path: "/f", kind: .file, mode: 0, modifiedNanoseconds: 1_000_000_000)])).encoded()
        }
        #expect(throws: ProtocolError.reservedBits(.processes)) {
            try Frame(stream: 1, .processes([ProcessSummary(pid: 1, argv: [], flags: .init(rawValue: 0x80))])).encoded()
        }
    }

    /// Pins the byte layout of one 1.2 message that docs/agent-protocol.md spells out.
    @Test func statBytesMatchTheDocument() throws {
        #expect(try Frame(stream: 2, .stat(path: "/a")).encoded() == [6, 0, 0, 0, 0x30, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0x2F, 0x61])
        #expect(try Frame(stream: 2, .directoryMade(created: true)).encoded() == [1, 0, 0, 0, 0x36, 0, 0, 0, 2, 0, 0, 0, 1])
    }

    @Test func aProtocolErrorReachesThePeerWithItsCodeAndText() throws {
        let error = ProtocolError.trailingBytes(.ping, count: 1)
        let frames = try decode(error.frame.encoded(), from: .agent)
        #expect(frames == [Frame(stream: 0, .protocolError(code: 7, message: "Ping frame has 1 bytes after its last field"))])
    }

    @Test func handshakeAcceptsTheSameMajorAndUsesTheSmallerMinor() throws {
        let ack = try Handshake.answer(Hello(version: Version(major: 1, minor: 4), software: "new kiln"),
                                       software: "agent", capabilities: .pty)
        #expect(ack.version == Wire.version)
        #expect(try Handshake.accept(HelloAck(version: Version(major: 1, minor: 3), software: "a", capabilities: []),
                                     local: Version(major: 1, minor: 5)) == Version(major: 1, minor: 3))
    }

    @Test func handshakeRefusesAnotherMajorWithAClearMessage() {
        #expect(throws: ProtocolError.incompatibleVersion(local: Wire.version, peer: Version(major: 2, minor: 0))) {
            try Handshake.answer(Hello(version: Version(major: 2, minor: 0), software: "future kiln"),
                                 software: "agent", capabilities: [])
        }
        let error = ProtocolError.incompatibleVersion(local: Wire.version, peer: Version(major: 0, minor: 9))
        #expect(throws: error) {
            try Handshake.accept(HelloAck(version: Version(major: 0, minor: 9), software: "old agent", capabilities: []))
        }
        #expect(error.description.contains("this side speaks \(Wire.version), the peer 0.9"))
        #expect(error.code == 2)
    }
}

/// The fuzzer's 1.2 seeds (Fuzz/seeds/FuzzAgentProtocol) are valid streams, so that mutations
/// start from frames the decoder accepts.
@Suite struct FuzzSeedTests {
    @Test func theVersion12SeedsDecodeCompletely() throws {
        let file = String(#filePath)
        let seeds = String(file.dropLast("Tests/AgentProtocolTests/RoundTripTests.swift".count)) + "Fuzz/seeds/FuzzAgentProtocol/"
        for (name, side, count) in [("host-1.2", Side.host, 13), ("agent-1.2", Side.agent, 12)] {
            let bytes = try #require(readSeed(seeds + name), "\(seeds + name)")
            #expect(bytes[0] & 1 == (side == .host ? 0 : 1))
            #expect(try decode(Array(bytes.dropFirst()), from: side).count == count, "\(name)")
        }
    }

    func readSeed(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return out
    }
}
