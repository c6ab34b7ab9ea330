@testable import KilnService
import NIOCore
import Testing

/// Connect's streaming envelopes (one flag byte, a big-endian u32 length, the message) as the
/// E2B SDK sends them in a request body.
@Suite struct ConnectTests {
    func envelope(_ text: String, flags: UInt8 = 0) -> [UInt8] {
        var b = Connect.envelope(ByteBuffer(string: text), flags: flags)
        return b.readBytes(length: b.readableBytes)!
    }

    func messages(_ chunks: Chunks) async throws -> [String] {
        let reader = Connect.EnvelopeReader { chunks.next() }
        var out: [String] = []
        while let m = try await reader.next() { out.append(String(buffer: m)) }
        return out
    }

    func code(_ chunks: Chunks) async -> EnvdError.Code? {
        do { _ = try await messages(chunks); return nil } catch let e as EnvdError { return e.code } catch { return nil }
    }

    @Test func envelopesReadTheSameWhereverTheBodyIsCut() async throws {
        let body = envelope(#"{"process":{"cmd":"ls"}}"#) + envelope("") + envelope("{}") + envelope("{}", flags: 0x02)
        let expected = [#"{"process":{"cmd":"ls"}}"#, "", "{}"]
        #expect(try await messages(Chunks([body])) == expected)
        for cut in 1..<body.count {
            #expect(try await messages(Chunks(body, cutAt: [cut])) == expected, "cut at \(cut)")
        }
        #expect(try await messages(Chunks(body, every: 1)) == expected)
    }

    @Test func theEndOfStreamFlagEndsTheMessages() async throws {
        let body = envelope("{}") + envelope(#"{"error":null}"#, flags: 0x02) + envelope(#"{"after":"end"}"#)
        #expect(try await messages(Chunks(body, every: 3)) == ["{}"])
        // A body that just stops after whole messages ends the stream too.
        #expect(try await messages(Chunks([envelope("{}")])) == ["{}"])
    }

    @Test func anOversizedLengthIsRefusedBeforeItsBytesArrive() async {
        var head: [UInt8] = [0]
        withUnsafeBytes(of: UInt32(Connect.maxMessage + 1).bigEndian) { head += $0 }
        #expect(await code(Chunks([head])) == .resourceExhausted)
        #expect(await code(Chunks([[0, 0xff, 0xff, 0xff, 0xff]])) == .resourceExhausted)
    }

    @Test func compressedMessagesAreRefused() async {
        #expect(await code(Chunks([envelope("{}", flags: 0x01)])) == .unimplemented)
        #expect(await code(Chunks([envelope("{}", flags: 0x03)])) == .unimplemented)
    }

    @Test func aBodyEndingInsideAMessageIsAnError() async {
        #expect(await code(Chunks([Array(envelope(#"{"a":1}"#).dropLast())])) == .invalidArgument)
        #expect(await code(Chunks([[0, 0, 0]])) == .invalidArgument)
    }

    @Test func requestMessagesDecodeFromProto3JSON() throws {
        let start = try Connect.decode(ProcessMessages.StartRequest.self, ByteBuffer(string: #"""
            {"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi"], "envs": {"A": "1"}, "cwd": "/tmp"},
             "pty": {"size": {"cols": "120", "rows": 40}}, "tag": "t", "stdin": true}
            """#))
        #expect(start.process?.args == ["-c", "echo hi"])
        #expect(start.pty?.size?.cols == FlexInt(120) && start.pty?.size?.rows == FlexInt(40))
        let input = try Connect.decode(ProcessMessages.SendInputRequest.self, ByteBuffer(string: #"{"process":{"pid":7},"input":{"stdin":"aGk"}}"#))
        #expect(input.input?.stdin?.bytes == Array("hi".utf8)) // unpadded base64, as proto3 JSON allows
        let signal = try Connect.decode(ProcessMessages.SendSignalRequest.self, ByteBuffer(string: #"{"process":{"tag":"t"},"signal":"SIGNAL_SIGKILL"}"#))
        #expect(signal.signal?.number == 9)
        // An empty body is the empty message.
        #expect(try Connect.decode(ProcessMessages.ConnectRequest.self, ByteBuffer()).process == nil)
    }

    @Test func malformedMessagesAreInvalidArguments() {
        for bad in [#"{"process": {"cmd": 5}}"#, #"{"pty": {"size": {"cols": "wide"}}}"#, "[", #"{"process": {"cmd": "x", "args": "y"}}"#] {
            #expect(throws: EnvdError.self) { _ = try Connect.decode(ProcessMessages.StartRequest.self, ByteBuffer(string: bad)) }
        }
        #expect(throws: EnvdError.self) { _ = try Connect.decode(ProcessMessages.SendSignalRequest.self, ByteBuffer(string: #"{"signal":"SIGNAL_SIGHUP"}"#)) }
        #expect(throws: EnvdError.self) { _ = try Connect.decode(ProcessMessages.SendInputRequest.self, ByteBuffer(string: #"{"input":{"stdin":"!!"}}"#)) }
    }
}
