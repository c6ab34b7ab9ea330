import Glibc
import KilnTestSupport
import Testing
@testable import VMM

/// The console log's cap (Sources/VMM/Console.swift): a guest that writes without end leaves at
/// most twice the cap on the host, the newest output in the log and the one before in `.1`.
@Suite struct ConsoleLogTests {
    let directory: String

    init() throws {
        var template = Array("/tmp/kiln-console-log-XXXXXX".utf8CString)
        directory = String(cString: try #require(mkdtemp(&template)))
    }

    func open(_ name: String, append: Bool) -> Int32 {
        Glibc.open(directory + "/" + name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | (append ? O_APPEND : 0), 0o600)
    }

    func contents(_ name: String) -> String {
        TestFiles.read(directory + "/" + name) ?? ""
    }

    func removeAll() {
        for name in ["console.log", "console.log.1"] { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    func write(_ text: String, to console: Console) { for b in text.utf8 { console.guestWrote(b) } }

    @Test func aFullLogMovesToItsRotationFileAndStartsOver() {
        defer { removeAll() }
        let log = open("console.log", append: true), rotation = open("console.log.1", append: true)
        defer { close(log) }
        let console = Console(input: nil, output: log, limit: 100, rotation: rotation)
        close(rotation) // the console keeps a descriptor of its own
        // 25 lines of 10 bytes: lines 0-9 fill the log, 10-19 the next one, 20-24 start the third.
        for i in 0..<25 { write("line-\(String(i + 100).dropFirst())..\n", to: console) }
        let current = contents("console.log"), previous = contents("console.log.1")
        #expect(current == (20..<25).map { "line-\(String($0 + 100).dropFirst())..\n" }.joined())
        #expect(previous == (10..<20).map { "line-\(String($0 + 100).dropFirst())..\n" }.joined())
        #expect(current.utf8.count + previous.utf8.count <= 200)
    }

    @Test func withoutARotationFileTheOldContentIsDropped() {
        defer { removeAll() }
        let log = open("console.log", append: true)
        defer { close(log) }
        let console = Console(input: nil, output: log, limit: 64)
        write(String(repeating: "a", count: 64) + "newest", to: console)
        #expect(contents("console.log") == "newest")
    }

    @Test func aPanicIsSeenWhateverTheCap() {
        defer { removeAll() }
        let log = open("console.log", append: true)
        defer { close(log) }
        let console = Console(input: nil, output: log, limit: 16)
        write("[ 1.0] Kernel panic - not syncing: VFS\n", to: console)
        #expect(console.sawPanic)
        #expect(contents("console.log").utf8.count <= 16)
    }

    @Test func aLogThatIsNotARegularFileHasNoCap() throws {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let console = Console(input: nil, output: fds[1], limit: 4)
        write("0123456789", to: console)
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = read(fds[0], &buffer, buffer.count)
        #expect(String(decoding: buffer[0..<max(0, n)], as: UTF8.self) == "0123456789")
        removeAll()
    }
}
