import AgentProtocol

/// File transfers that stream: neither side holds a whole file, and the agent sends (or takes)
/// data only as fast as the other end of the transfer consumes (or produces) it.
extension AgentClient {
    /// Opens a guest file for reading: its metadata, then its data in chunks. Credit for more
    /// data goes back to the agent as the chunks are consumed.
    public func openFile(_ path: String) async throws -> (info: FileInfo, data: FileChunks) {
        let (stream, chunks) = try state.withLock { s throws(AgentClientError) -> (UInt32, AsyncThrowingStream<[UInt8], any Error>) in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            let (chunks, sink) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
            s.reads[id] = ReadState(sink: sink)
            return (id, chunks)
        }
        let info: FileInfo = try await withCheckedThrowingContinuation { c in
            let ok = state.withLock { s in
                if let e = s.closed { s.reads[stream] = nil; c.resume(throwing: e); return false }
                s.reads[stream]?.opened = c
                return true
            }
            if ok { send(Frame(stream: stream, .readFile(path: path))) }
        }
        return (info, FileChunks(base: chunks, client: self, stream: stream))
    }

    /// Writes a guest file from `next`, called until it returns nil; the file appears (atomically,
    /// after fsync) only when all of it arrived. Returns the bytes written.
    public func writeFile(_ path: String, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                          options: WriteFile.Options = [], from next: () async throws -> [UInt8]?) async throws -> UInt64 {
        let stream = try state.withLock { s throws(AgentClientError) -> UInt32 in
            if let e = s.closed { throw e }
            let id = s.allocateStream()
            s.writes[id] = WriteState()
            return id
        }
        send(Frame(stream: stream, .writeFile(WriteFile(path: path, mode: mode, uid: uid, gid: gid, options: options))))
        var failed = false
        do {
            sending: while let chunk = try await next() {
                var offset = 0
                while offset < chunk.count {
                    let n = try await takeCredit(stream, wanted: min(chunk.count - offset, Wire.maxPayload))
                    if n == 0 { break sending } // the transfer already ended (failure): its result says why
                    send(Frame(stream: stream, .fileData(Array(chunk[offset..<(offset + n)]))))
                    offset += n
                }
            }
        } catch {
            failed = true
            send(Frame(stream: stream, .cancel))
            _ = try? await finishWrite(stream)
            throw error
        }
        if !failed { send(Frame(stream: stream, .fileEnd)) }
        return try await finishWrite(stream)
    }

    func finishWrite(_ stream: UInt32) async throws -> UInt64 {
        try await withCheckedThrowingContinuation { c in
            state.withLock { s in
                if let result = s.writes[stream]?.result {
                    s.writes[stream] = nil
                    c.resume(with: result)
                } else if let e = s.closed {
                    c.resume(throwing: e)
                } else if s.writes[stream] == nil {
                    c.resume(throwing: AgentClientError.connection("the transfer already ended"))
                } else {
                    s.writes[stream]?.done = c
                }
            }
        }
    }

    /// The consumer of a streamed read took `count` bytes: return credit when due.
    func consumedFile(_ stream: UInt32, _ count: Int) {
        let credit: UInt32? = state.withLock { s in s.reads[stream]?.window.consume(count) }
        if let credit { send(Frame(stream: stream, .credit(.file, bytes: credit))) }
    }

    /// Ends a streamed read early.
    func cancelRead(_ stream: UInt32) {
        let open = state.withLock { s in s.reads[stream] != nil }
        if open { send(Frame(stream: stream, .cancel)) }
    }
}

/// A guest file's data, chunk by chunk; consuming a chunk lets the agent send more.
public struct FileChunks: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let base: AsyncThrowingStream<[UInt8], any Error>
    let client: AgentClient
    let stream: UInt32

    public func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator(), client: client, stream: stream) }

    /// Stops the transfer (the rest of the file is not sent).
    public func cancel() { client.cancelRead(stream) }

    public struct Iterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<[UInt8], any Error>.AsyncIterator
        let client: AgentClient
        let stream: UInt32
        public mutating func next() async throws -> [UInt8]? {
            guard let chunk = try await base.next() else { return nil }
            client.consumedFile(stream, chunk.count)
            return chunk
        }
    }
}
