import NIOCore

/// A body handed to a streaming reader in the pieces a test chooses, as a socket might deliver it.
final class Chunks: @unchecked Sendable {
    private var pieces: [[UInt8]]
    init(_ pieces: [[UInt8]]) { self.pieces = pieces.filter { !$0.isEmpty } }

    /// `bytes` cut at `offsets` (ascending, each within the bytes).
    convenience init(_ bytes: [UInt8], cutAt offsets: [Int]) {
        var pieces: [[UInt8]] = []
        var start = 0
        for o in offsets + [bytes.count] { pieces.append(Array(bytes[start..<o])); start = o }
        self.init(pieces)
    }

    /// `bytes` in pieces of `size`.
    convenience init(_ bytes: [UInt8], every size: Int) {
        self.init(stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) })
    }

    func next() -> ByteBuffer? {
        guard !pieces.isEmpty else { return nil }
        return ByteBuffer(bytes: pieces.removeFirst())
    }
}
