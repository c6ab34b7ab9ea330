import FoundationEssentials
import Glibc
import NIOCore

/// For fuzzing only (Fuzz/Sources/FuzzServiceRequests): the service's parsers of untrusted bytes,
/// reachable from a release build without `@testable`. Each takes the hostile input, runs it
/// through the parser the way a request would, and traps when an invariant breaks (memory held
/// past a parser's bound, a decoded value that does not survive its own rules). Not for use by
/// the service itself.
public enum FuzzEntryPoints {
    /// The control API's request bodies (NewSandbox, timeout, refreshes, resume, connect), as
    /// `ControlAPI.decode` reads them, and the error line a bad one produces.
    public static func controlRequestBodies(_ bytes: [UInt8]) {
        let data = Data(bytes)
        func attempt<T: Decodable>(_ type: T.Type) {
            do { _ = try JSONDecoder().decode(T.self, from: data) } catch { _ = JSONErrors.describe(error) }
        }
        attempt(NewSandboxRequest.self)
        attempt(TimeoutRequest.self)
        attempt(RefreshRequest.self)
        attempt(ResumeRequest.self)
        attempt(ConnectRequest.self)
    }

    /// A `--tenants` file. Whatever it accepts must map every key back to its tenant.
    public static func tenantsFile(_ bytes: [UInt8]) {
        guard let t = try? Tenants.parse(bytes, source: "fuzz") else { return }
        for tenant in t.all {
            for key in tenant.apiKeys { precondition(t.tenant(forKey: key)?.name == tenant.name, "key maps to the wrong tenant") }
        }
    }

    /// A Connect streaming request body in `chunk`-byte pieces: the envelope reader, then each
    /// message through the process and filesystem services' request decoders.
    public static func connectEnvelopes(_ bytes: [UInt8], chunk: Int) {
        let source = Pieces(bytes, chunk: chunk)
        runBlocking {
            let reader = Connect.EnvelopeReader { source.next() }
            while true {
                let message: ByteBuffer?
                do { message = try await reader.next() } catch { precondition(error is EnvdError, "\(error)"); return }
                precondition(reader.buffer.readableBytes <= 5 + Connect.maxMessage + chunk, "the reader holds \(reader.buffer.readableBytes) bytes")
                guard let message else { return }
                envdRequest(message)
            }
        }
    }

    /// One message through every process.Process and filesystem.Filesystem request decoder.
    static func envdRequest(_ message: ByteBuffer) {
        typealias F = FilesystemMessages
        _ = try? Connect.decode(F.PathRequest.self, message)
        _ = try? Connect.decode(F.ListDirRequest.self, message)
        _ = try? Connect.decode(F.MoveRequest.self, message)
        _ = try? Connect.decode(F.WatchRequest.self, message)
        _ = try? Connect.decode(F.WatcherRequest.self, message)
        typealias M = ProcessMessages
        _ = try? Connect.decode(M.StartRequest.self, message)
        _ = try? Connect.decode(M.ConnectRequest.self, message)
        _ = try? Connect.decode(M.UpdateRequest.self, message)
        _ = try? Connect.decode(M.SendInputRequest.self, message)
        _ = try? Connect.decode(M.SendSignalRequest.self, message)
        _ = try? Connect.decode(M.CloseStdinRequest.self, message)
        _ = try? Connect.decode(M.StreamInputEvent.self, message)
    }

    /// A multipart/form-data body (boundary `boundary`) in `chunk`-byte pieces, read as
    /// `POST /files` reads it. The reader must never hold much more than one chunk, a delimiter
    /// and its header limit, whatever the body.
    public static func multipart(_ bytes: [UInt8], boundary: String, chunk: Int) {
        guard !boundary.isEmpty else { return }
        let source = Pieces(bytes, chunk: chunk)
        let bound = MultipartReader.maxHeaders + (64 << 10) + 2 * chunk + boundary.utf8.count + 8
        runBlocking {
            let reader = MultipartReader(boundary: boundary) { source.next() }
            do {
                while let part = try await reader.nextPart() {
                    _ = (part.name, part.filename)
                    precondition(reader.buffer.count <= bound, "the reader holds \(reader.buffer.count) bytes")
                    while let data = try await reader.nextData() {
                        precondition(data.count <= bound && reader.buffer.count <= bound, "the reader holds \(reader.buffer.count) bytes")
                    }
                }
            } catch {
                precondition(error is MultipartReader.Failure, "\(error)")
            }
            precondition(reader.buffer.count <= bound, "the reader holds \(reader.buffer.count) bytes")
        }
        _ = MultipartReader.boundary(of: String(decoding: bytes.prefix(512), as: UTF8.self))
    }

    /// A request target: path and query split and percent-decoded. Decoding never grows the text.
    public static func requestTarget(_ bytes: [UInt8]) {
        let target = String(decoding: bytes, as: UTF8.self)
        let (path, query) = HTTPRequest.split(target)
        precondition(path.utf8.count <= target.utf8.count * 3, "decoded path longer than its replacement characters allow")
        for (k, v) in query { precondition(k.utf8.count + v.utf8.count <= target.utf8.count * 3 + query.count, "decoded query grew") }
        let once = HTTPRequest.percentDecode(target, plusIsSpace: true)
        precondition(once.utf8.count <= target.utf8.count * 3)
    }

    /// The next piece of a fixed body.
    final class Pieces: @unchecked Sendable {
        let bytes: [UInt8]
        let chunk: Int
        var offset = 0
        init(_ bytes: [UInt8], chunk: Int) { self.bytes = bytes; self.chunk = max(1, chunk) }
        func next() -> ByteBuffer? {
            guard offset < bytes.count else { return nil }
            let end = min(offset + chunk, bytes.count)
            defer { offset = end }
            return ByteBuffer(bytes: bytes[offset..<end])
        }
    }

    /// Runs an async parser to completion from the fuzzer's synchronous callback.
    static func runBlocking(_ body: @escaping @Sendable () async -> Void) {
        struct Semaphore: @unchecked Sendable { let pointer: UnsafeMutablePointer<sem_t> }
        let done = Semaphore(pointer: .allocate(capacity: 1))
        sem_init(done.pointer, 0, 0)
        defer { sem_destroy(done.pointer); done.pointer.deallocate() }
        Task {
            await body()
            sem_post(done.pointer)
        }
        while sem_wait(done.pointer) != 0 && errno == EINTR {}
    }
}
