import Foundation
import Glibc
import Images

/// A private temporary directory for one test, removed at the end, and tools run in it.
final class Scratch {
    let path: String

    init() {
        var template = Array("/tmp/kiln-images-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { _ = try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    /// Runs a program; returns its stdout. Throws with its stderr if it fails.
    @discardableResult
    func run(_ argv: [String], cwd: String? = nil, input: [UInt8]? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        p.currentDirectoryURL = URL(fileURLWithPath: cwd ?? path)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        let inPipe = Pipe()
        p.standardInput = input == nil ? FileHandle.nullDevice : inPipe
        try p.run()
        if let input { inPipe.fileHandleForWriting.write(Data(input)); try inPipe.fileHandleForWriting.close() }
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ToolFailed(text: "\(argv.joined(separator: " ")): \(String(decoding: stderr, as: UTF8.self))")
        }
        return String(decoding: stdout, as: UTF8.self)
    }

    /// Runs a Python script (Python's tarfile writes any header a test needs, hostile ones too).
    @discardableResult
    func python(_ script: String) throws -> String { try run(["python3", "-c", script]) }

    func bytes(_ name: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: file(name)) ?? Data()) }

    func write(_ name: String, _ bytes: [UInt8]) { _ = FileManager.default.createFile(atPath: file(name), contents: Data(bytes)) }
}

struct ToolFailed: Error, CustomStringConvertible { let text: String; var description: String { text } }

/// Every entry of an archive, with the contents of regular files.
func readAll(_ source: ByteSource, limits: TarReader.Limits = .init()) throws(TarError) -> [(TarEntry, [UInt8])] {
    let reader = TarReader(source, limits: limits)
    var all: [(TarEntry, [UInt8])] = []
    while let entry = try reader.next() { all.append((entry, try reader.readContents(limit: 1 << 24))) }
    return all
}
