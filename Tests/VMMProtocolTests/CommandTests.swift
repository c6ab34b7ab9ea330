import Testing
import VMMProtocol

/// One grammar for the control sockets and the command channel.
@Suite struct CommandTests {
    @Test func everyCommandReadsBackAsItself() throws {
        for command: VMMCommand in [.pause, .resume, .status, .files, .snapshot(directory: nil), .snapshot(directory: "/tmp/a dir/snap")] {
            #expect(try VMMCommand.parse(command.text) == command)
        }
        #expect(try VMMCommand.parse("snapshot /tmp/with spaces") == .snapshot(directory: "/tmp/with spaces"))
    }

    @Test func unknownOrMisshapenCommandsAreRefusedWithTheUsage() {
        for bad in ["", "paws", "pause now", "status x", "files please", "PAUSE", "resume\n"] {
            #expect(throws: VMMCommand.ParseError(text: bad), "\(bad)") { _ = try VMMCommand.parse(bad) }
        }
        #expect(VMMCommand.ParseError(text: "x").description == "unknown command 'x' (pause, resume, status, snapshot DIR)")
    }
}
