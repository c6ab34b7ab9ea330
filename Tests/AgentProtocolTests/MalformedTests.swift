import Testing
@testable import AgentProtocol

@Suite struct MalformedTests {
    let ping = MessageType.ping.rawValue

    func expectError(_ expected: ProtocolError, _ bytes: [UInt8], from side: Side = .host,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(throws: expected, sourceLocation: sourceLocation) { try decode(bytes, from: side) }
        // The same bytes one at a time give the same error.
        #expect(throws: expected, sourceLocation: sourceLocation) {
            try decode(bytes.indices.map { bytes[$0...$0] }, from: side)
        }
    }

    @Test func badMagic() {
        expectError(.badMagic(0x4E4C_494A), raw(0x01, le(UInt32(0x4E4C_494A)) + le(UInt16(1)) + le(UInt16(0)) + lstring([])))
        expectError(.badMagic(0), raw(0x02, le(UInt32(0)) + [UInt8](repeating: 0, count: 16)), from: .agent)
    }

    @Test func unknownType() {
        expectError(.unknownType(0x7F), raw(0x7F))
        expectError(.unknownType(0x00), raw(0x00, stream: 1))
    }

    @Test func oversizedIsRefusedFromTheHeaderAlone() {
        expectError(.oversized(length: Wire.maxPayload + 1, limit: Wire.maxPayload),
                    raw(MessageType.stdout.rawValue, stream: 1, length: UInt32(Wire.maxPayload + 1)), from: .agent)
        expectError(.oversized(length: Int(UInt32.max), limit: Wire.maxPayload), raw(ping, length: UInt32.max))
        var small = FrameDecoder(from: .host, maxPayload: 16)
        small.feed(raw(MessageType.readFile.rawValue, stream: 1, lstring(Array(repeating: 0x61, count: 13))))
        #expect(throws: ProtocolError.oversized(length: 17, limit: 16)) { try small.next() }
    }

    @Test func truncatedFields() {
        expectError(.truncated(.ping), raw(ping, [1, 2, 3, 4]))
        expectError(.truncated(.readFile), raw(MessageType.readFile.rawValue, stream: 1, le(UInt32(10)) + [0x61]))
        // A list count far beyond the payload is refused before anything is reserved for it.
        expectError(.truncated(.exec), raw(MessageType.exec.rawValue, stream: 1, le(UInt32.max)))
        expectError(.truncated(.exit), raw(MessageType.exit.rawValue, stream: 1, [0, 0]), from: .agent)
    }

    @Test func theConnectionEndingInsideAFrame() {
        let frame = (try? Frame(stream: 0, .ping(nonce: 1)).encoded()) ?? []
        #expect(throws: ProtocolError.endedInsideHeader(count: 5)) { try decode(Array(frame[..<5]), from: .host) }
        #expect(throws: ProtocolError.truncated(.ping)) { try decode(Array(frame[..<14]), from: .host) }
        #expect(throws: ProtocolError.truncated(.ping)) { try decode(Array(frame[..<12]), from: .host) }
    }

    @Test func invalidUTF8() {
        expectError(.invalidUTF8(.readFile), raw(MessageType.readFile.rawValue, stream: 1, lstring([0x2F, 0xFF])))
        expectError(.invalidUTF8(.exec), raw(MessageType.exec.rawValue, stream: 1, le(UInt32(1)) + lstring([0xC3])))
        expectError(.invalidUTF8(.protocolError), raw(MessageType.protocolError.rawValue, le(UInt16(1)) + lstring([0xED, 0xA0, 0x80])))
    }

    @Test func trailingBytes() {
        expectError(.trailingBytes(.ping, count: 1), raw(ping, [UInt8](repeating: 0, count: 9)))
        expectError(.trailingBytes(.stdinClose, count: 2), raw(MessageType.stdinClose.rawValue, stream: 1, [0, 0]))
        expectError(.trailingBytes(.fileEnd, count: 1), raw(MessageType.fileEnd.rawValue, stream: 1, [0]), from: .agent)
    }

    @Test func reservedBits() {
        expectError(.reservedBits(.ping), raw(ping, flags: 1, le(UInt64(0))))
        expectError(.reservedBits(.ping), raw(ping, reserved: 0x100, le(UInt64(0))))
        expectError(.reservedBits(.exit), raw(MessageType.exit.rawValue, stream: 1, [0] + le(Int32(0)) + [4]), from: .agent)
        expectError(.reservedBits(.writeFile),
                    raw(MessageType.writeFile.rawValue, stream: 1, lstring([0x2F]) + le(UInt32(0o644)) + le(UInt32(0)) + le(UInt32(0)) + [0x04]))
    }

    @Test func invalidValues() throws {
        expectError(.invalidValue(.credit, field: "channel"), raw(MessageType.credit.rawValue, stream: 1, [9] + le(UInt32(1))))
        // The host grants stdout credit, never stdin credit, and the agent the other way round.
        expectError(.invalidValue(.credit, field: "channel"), raw(MessageType.credit.rawValue, stream: 1, [0] + le(UInt32(1))))
        expectError(.invalidValue(.credit, field: "channel"), raw(MessageType.credit.rawValue, stream: 1, [1] + le(UInt32(1))), from: .agent)
        expectError(.invalidValue(.signal, field: "signal number"), raw(MessageType.signal.rawValue, stream: 1, le(Int32(0))))
        expectError(.invalidValue(.signal, field: "signal number"), raw(MessageType.signal.rawValue, stream: 1, le(Int32(65))))
        expectError(.invalidValue(.exit, field: "termination kind"), raw(MessageType.exit.rawValue, stream: 1, [2] + le(Int32(0)) + [0]), from: .agent)
        expectError(.invalidValue(.writeFile, field: "mode"),
                    raw(MessageType.writeFile.rawValue, stream: 1, lstring([0x2F]) + le(UInt32(0o10000)) + le(UInt32(0)) + le(UInt32(0)) + [0]))
        expectError(.invalidValue(.stdout, field: "empty payload"), raw(MessageType.stdout.rawValue, stream: 1), from: .agent)
        let exec = le(UInt32(1)) + lstring([0x73, 0x68]) + le(UInt32(0)) + lstring([]) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(0))
        expectError(.invalidValue(.exec, field: "pty presence byte"), raw(MessageType.exec.rawValue, stream: 1, exec + [2] + le(UInt32(0))))
        #expect(try decode(raw(MessageType.exec.rawValue, stream: 1, exec + [0] + le(UInt32(0))), from: .host)
            == [Frame(stream: 1, .exec(Exec(argv: ["sh"])))])
    }

    /// The 1.2 messages: each field check of docs/agent-protocol.md, one case at a time.
    @Test func version12Fields() throws {
        let exec = le(UInt32(1)) + lstring([0x73, 0x68]) + le(UInt32(0)) + lstring([]) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(0))
        let spawn = MessageType.spawn.rawValue
        #expect(try decode(raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [1] + lstring([0x74])), from: .host)
            == [Frame(stream: 1, .spawn(Spawn(Exec(argv: ["sh"]), flags: [.keep], tag: "t")))])
        expectError(.reservedBits(.spawn), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [8] + lstring([])))
        // 1.4: bit 2 continues the Limits record with openFiles; never alone, never 0.
        #expect(try decode(raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [6] + lstring([]) + le(UInt32(5)) + le(UInt32(64))), from: .host)
            == [Frame(stream: 1, .spawn(Spawn(Exec(argv: ["sh"]), limits: Limits(pids: 5, openFiles: 64))))])
        expectError(.invalidValue(.spawn, field: "openFiles flag"), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [4] + lstring([]) + le(UInt32(64))))
        expectError(.invalidValue(.spawn, field: "openFiles"), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [6] + lstring([]) + le(UInt32(5)) + le(UInt32(0))))
        expectError(.truncated(.spawn), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [6] + lstring([]) + le(UInt32(5))))
        // 1.3: flags bit 1 adds the Limits record after the tag.
        #expect(try decode(raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [2] + lstring([]) + le(UInt32(5))), from: .host)
            == [Frame(stream: 1, .spawn(Spawn(Exec(argv: ["sh"]), limits: Limits(pids: 5))))])
        expectError(.truncated(.spawn), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [2] + lstring([])))
        expectError(.invalidValue(.spawn, field: "pty presence byte"), raw(spawn, stream: 1, exec + [3] + le(UInt32(0)) + [0] + lstring([])))
        expectError(.truncated(.spawn), raw(spawn, stream: 1, exec + [0] + le(UInt32(0)) + [0]))
        expectError(.truncated(.attach), raw(MessageType.attach.rawValue, stream: 1, [1, 2, 3]))
        expectError(.trailingBytes(.listProcesses, count: 1), raw(MessageType.listProcesses.rawValue, stream: 1, [0]))
        let summary = le(UInt32(1)) + lstring([]) + le(UInt32(0)) + le(UInt32(0)) + lstring([])
        expectError(.reservedBits(.processes), raw(MessageType.processes.rawValue, stream: 1, le(UInt32(1)) + summary + [0x10]), from: .agent)
        expectError(.truncated(.processes), raw(MessageType.processes.rawValue, stream: 1, le(UInt32(2)) + summary + [0]), from: .agent)
        expectError(.invalidValue(.signalProcess, field: "signal number"),
                    raw(MessageType.signalProcess.rawValue, stream: 1, le(UInt32(1)) + le(Int32(0))))
        expectError(.invalidValue(.signalProcess, field: "signal number"),
                    raw(MessageType.signalProcess.rawValue, stream: 1, le(UInt32(1)) + le(Int32(-9))))
        expectError(.invalidUTF8(.stat), raw(MessageType.stat.rawValue, stream: 1, lstring([0xFF])))
        expectError(.truncated(.listDirectory), raw(MessageType.listDirectory.rawValue, stream: 1, lstring([0x2F]) + [1]))
        expectError(.invalidValue(.makeDirectory, field: "mode"),
                    raw(MessageType.makeDirectory.rawValue, stream: 1, lstring([0x2F]) + le(UInt32(0o40755)) + le(UInt32(0)) + le(UInt32(0))))
        expectError(.truncated(.rename), raw(MessageType.rename.rawValue, stream: 1, lstring([0x2F])))
        expectError(.invalidUTF8(.remove), raw(MessageType.remove.rawValue, stream: 1, lstring([0xC0, 0x80])))
        expectError(.reservedBits(.watchDirectory), raw(MessageType.watchDirectory.rawValue, stream: 1, lstring([0x2F]) + [2]))
        expectError(.truncated(.lookupUser), raw(MessageType.lookupUser.rawValue, stream: 1, le(UInt32(5)) + [0x61]))
        expectError(.reservedBits(.directoryMade), raw(MessageType.directoryMade.rawValue, stream: 1, [3]), from: .agent)
        expectError(.trailingBytes(.done, count: 4), raw(MessageType.done.rawValue, stream: 1, [0, 0, 0, 0]), from: .agent)
        expectError(.trailingBytes(.watching, count: 1), raw(MessageType.watching.rawValue, stream: 1, [0]), from: .agent)
        expectError(.trailingBytes(.listEnd, count: 1), raw(MessageType.listEnd.rawValue, stream: 1, [0]), from: .agent)
        expectError(.invalidValue(.events, field: "event kind"), raw(MessageType.events.rawValue, stream: 1, le(UInt32(1)) + [0] + lstring([])), from: .agent)
        expectError(.invalidValue(.events, field: "event kind"), raw(MessageType.events.rawValue, stream: 1, le(UInt32(1)) + [6] + lstring([])), from: .agent)
        expectError(.truncated(.events), raw(MessageType.events.rawValue, stream: 1, le(UInt32.max) + [1]), from: .agent)
        expectError(.truncated(.user), raw(MessageType.user.rawValue, stream: 1, lstring([0x61]) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(9))), from: .agent)
    }

    /// EntryInfo's field checks, in an Entry and inside an Entries list.
    @Test func entryInfoFields() throws {
        func entry(kind: UInt8 = 1, mode: UInt32 = 0o644, nanoseconds: UInt32 = 0, symlink: [UInt8] = [0]) -> [UInt8] {
            lstring([0x66]) + lstring([0x2F, 0x66]) + [kind] + le(mode) + le(UInt64(3)) + le(UInt32(0)) + le(UInt32(0))
                + lstring([]) + lstring([]) + le(Int64(0)) + le(nanoseconds) + symlink
        }
        let type = MessageType.entry.rawValue
        #expect(try decode(raw(type, stream: 1, entry()), from: .agent)
            == [Frame(stream: 1, .entry(EntryInfo(name: "f", path: "/f", kind: .file, mode: 0o644, size: 3)))])
        expectError(.invalidValue(.entry, field: "entry kind"), raw(type, stream: 1, entry(kind: 4)), from: .agent)
        expectError(.invalidValue(.entry, field: "mode"), raw(type, stream: 1, entry(mode: 0o100644)), from: .agent)
        expectError(.invalidValue(.entry, field: "nanoseconds"), raw(type, stream: 1, entry(nanoseconds: 1_000_000_000)), from: .agent)
        expectError(.invalidValue(.entry, field: "symlink presence byte"), raw(type, stream: 1, entry(symlink: [2])), from: .agent)
        // A symlink must say where it leads, and nothing else may.
        expectError(.invalidValue(.entry, field: "symlink presence byte"), raw(type, stream: 1, entry(kind: 3)), from: .agent)
        let link = [UInt8(1)] + lstring([0x78]) + lstring([]) + [0] + le(UInt32(0))
        expectError(.invalidValue(.entry, field: "symlink presence byte"), raw(type, stream: 1, entry(kind: 1, symlink: link)), from: .agent)
        #expect(try decode(raw(type, stream: 1, entry(kind: 3, symlink: link)), from: .agent).count == 1)
        let badTarget = [UInt8(1)] + lstring([0x78]) + lstring([]) + [9] + le(UInt32(0))
        expectError(.invalidValue(.entry, field: "entry kind"), raw(type, stream: 1, entry(kind: 3, symlink: badTarget)), from: .agent)
        let entries = MessageType.entries.rawValue
        expectError(.invalidValue(.entries, field: "mode"), raw(entries, stream: 1, le(UInt32(2)) + entry() + entry(mode: 0o10000)), from: .agent)
        expectError(.truncated(.entries), raw(entries, stream: 1, le(UInt32(3)) + entry() + entry()), from: .agent)
    }

    @Test func version12MessagesFromTheWrongSideOrStream() {
        expectError(.unexpected(.entry), raw(MessageType.entry.rawValue, stream: 1), from: .host)
        expectError(.unexpected(.user), raw(MessageType.user.rawValue, stream: 1), from: .host)
        expectError(.unexpected(.stat), raw(MessageType.stat.rawValue, stream: 1), from: .agent)
        expectError(.unexpected(.spawn), raw(MessageType.spawn.rawValue, stream: 1), from: .agent)
        expectError(.wrongStream(.stat, stream: 0), raw(MessageType.stat.rawValue, stream: 0, lstring([0x2F])))
        expectError(.wrongStream(.listProcesses, stream: 0), raw(MessageType.listProcesses.rawValue, stream: 0))
        expectError(.wrongStream(.done, stream: 0), raw(MessageType.done.rawValue, stream: 0), from: .agent)
    }

    @Test func wrongStream() {
        expectError(.wrongStream(.ping, stream: 5), raw(ping, stream: 5, le(UInt64(0))))
        expectError(.wrongStream(.exec, stream: 0), raw(MessageType.exec.rawValue, stream: 0))
        expectError(.wrongStream(.stdout, stream: 0), raw(MessageType.stdout.rawValue, stream: 0, [1]), from: .agent)
    }

    @Test func messagesFromTheWrongSide() {
        expectError(.unexpected(.stdout), raw(MessageType.stdout.rawValue, stream: 1, [1]), from: .host)
        expectError(.unexpected(.exec), raw(MessageType.exec.rawValue, stream: 1), from: .agent)
        expectError(.unexpected(.hello), raw(0x01), from: .agent)
        expectError(.unexpected(.helloAck), raw(0x02), from: .host)
    }

    @Test func framesBeforeAnErrorArriveAndTheErrorSticks() throws {
        var decoder = FrameDecoder(from: .host)
        decoder.feed(try encode(Array(hostFrames.prefix(3))) + raw(0x7F) + (try encode(hostFrames)))
        for expected in hostFrames.prefix(3) { #expect(try decoder.next() == expected) }
        #expect(throws: ProtocolError.unknownType(0x7F)) { try decoder.next() }
        decoder.feed(try Frame(stream: 0, .ping(nonce: 1)).encoded())
        #expect(throws: ProtocolError.unknownType(0x7F)) { try decoder.next() }
        #expect(throws: ProtocolError.unknownType(0x7F)) { try decoder.finish() }
    }

    @Test func everyErrorHasItsOwnCode() {
        let errors: [ProtocolError] = [
            .badMagic(0), .incompatibleVersion(local: Wire.version, peer: Wire.version), .unknownType(0),
            .oversized(length: 0, limit: 0), .truncated(.ping), .invalidUTF8(.ping), .trailingBytes(.ping, count: 0),
            .reservedBits(.ping), .invalidValue(.ping, field: ""), .wrongStream(.ping, stream: 0), .unexpected(.ping),
            .flowControl(stream: 0), .streamInUse(0), .endedInsideHeader(count: 0),
        ]
        #expect(Set(errors.map(\.code)) == Set(1...14))
    }

    /// Thousands of corrupted streams: each decodes or throws a ProtocolError, never traps, and
    /// whatever decodes re-encodes to frames that decode the same.
    @Test func randomCorruptionNeverCrashes() throws {
        var rng = SplitMix(state: 0xC0FFEE)
        let streams = [(try encode(hostFrames), Side.host), (try encode(agentFrames.filter { $0.message.type != .stdout }), .agent)]
        var failures = 0, successes = 0
        for _ in 0..<5000 {
            let (clean, side) = streams[Int.random(in: 0...1, using: &rng)]
            var bytes = clean
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes[i] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                default: bytes.removeSubrange(i..<min(bytes.count, i + Int.random(in: 1...8, using: &rng)))
                }
                if bytes.isEmpty { bytes = [0] }
            }
            var chunks: [ArraySlice<UInt8>] = []
            var i = 0
            while i < bytes.count {
                let n = Int.random(in: 1...64, using: &rng)
                chunks.append(bytes[i..<min(i + n, bytes.count)])
                i += n
            }
            do throws(ProtocolError) {
                let frames = try decode(chunks, from: side)
                #expect(try decode(encode(frames), from: side) == frames)
                successes += 1
            } catch {
                failures += 1
            }
        }
        #expect(failures > 0 && successes > 0)
    }
}
