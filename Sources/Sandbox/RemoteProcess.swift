import AgentProtocol

/// A process running in the guest. Read `output` to the end (it finishes once all output has
/// arrived), then `wait()` for the exit status. Output flow control follows the consumer: the
/// agent stops reading the process's pipes when this side stops iterating.
public final class RemoteProcess: Sendable {
    let client: AgentClient
    let stream: UInt32
    /// The process id in the guest.
    public let pid: UInt32
    public let output: Output

    init(client: AgentClient, stream: UInt32, pid: UInt32, output: AsyncStream<OutputChunk>) {
        self.client = client
        self.stream = stream
        self.pid = pid
        self.output = Output(base: output, client: client, stream: stream)
    }

    /// Sends bytes to the process's stdin, waiting for the agent's credit when its window is full.
    public func write(_ bytes: [UInt8]) async throws {
        var offset = 0
        while offset < bytes.count {
            let n = try await client.takeCredit(stream, wanted: bytes.count - offset)
            if n == 0 { return } // the process has exited: the rest has nowhere to go
            client.send(Frame(stream: stream, .stdin(Array(bytes[offset..<(offset + n)]))))
            offset += n
        }
    }

    /// Closes stdin (on a PTY: types the EOF character).
    public func closeStdin() { client.send(Frame(stream: stream, .stdinClose)) }

    /// Sends `signal` to the process group.
    public func signal(_ signal: Int32) { client.send(Frame(stream: stream, .signal(signal))) }

    /// Sets the PTY's window size.
    public func resize(rows: UInt16, columns: UInt16) {
        client.send(Frame(stream: stream, .resize(WindowSize(rows: rows, columns: columns))))
    }

    /// The exit status, after all output was delivered to `output`.
    public func wait() async throws -> ExitStatus { try await client.waitForExit(stream) }

    /// Runs to the end collecting output: (stdout, stderr, status).
    public func collect() async throws -> (stdout: [UInt8], stderr: [UInt8], status: ExitStatus) {
        var out: [UInt8] = [], err: [UInt8] = []
        for await chunk in output {
            switch chunk {
            case .stdout(let b): out += b
            case .stderr(let b): err += b
            }
        }
        return (out, err, try await wait())
    }

    /// The process's output chunks in arrival order; consuming one returns its credit to the agent.
    public struct Output: AsyncSequence, Sendable {
        public typealias Element = OutputChunk
        let base: AsyncStream<OutputChunk>
        let client: AgentClient
        let stream: UInt32

        public func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator(), client: client, stream: stream) }

        public struct Iterator: AsyncIteratorProtocol {
            var base: AsyncStream<OutputChunk>.Iterator
            let client: AgentClient
            let stream: UInt32
            public mutating func next() async -> OutputChunk? {
                guard let chunk = await base.next() else { return nil }
                switch chunk {
                case .stdout(let b): client.consumed(stream, .stdout, b.count)
                case .stderr(let b): client.consumed(stream, .stderr, b.count)
                }
                return chunk
            }
        }
    }
}
