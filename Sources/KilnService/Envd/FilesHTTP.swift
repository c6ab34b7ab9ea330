import AgentProtocol
import FoundationEssentials
import NIOCore
import NIOHTTP1
import Sandbox

/// envd's HTTP file transfer (`GET /files` downloads, `POST /files` uploads with
/// multipart/form-data or a raw octet-stream body), streamed through the agent chunk by chunk.
struct FilesHTTP {
    let sandbox: ServiceSandbox
    let request: HTTPRequest
    let response: HTTPResponseWriter

    struct ErrorBody: Encodable { var message: String; var code: Int }
    struct WriteInfo: Encodable { var name: String; var type: String; var path: String }

    func serve() async throws {
        do {
            switch request.method {
            case .GET: try await download()
            case .POST: try await upload()
            default: throw HTTPError(.methodNotAllowed, "/files takes GET or POST")
            }
        } catch let e as HTTPError {
            guard !response.headSent else { return }
            try await fail(e.status, e.message)
        } catch let e as EnvdError {
            guard !response.headSent else { return }
            try await fail(HTTPResponseStatus(statusCode: e.code.httpStatus), e.message)
        }
    }

    func fail(_ status: HTTPResponseStatus, _ message: String) async throws {
        try await response.respond(status, headers: [("content-type", "application/json")],
                                   body: Connect.encode(ErrorBody(message: message, code: Int(status.code))))
    }

    /// A path as envd resolves it: relative to the user's home.
    static func resolve(_ path: String, home: String) throws(HTTPError) -> String {
        guard !path.isEmpty else { throw HTTPError(.badRequest, "the path parameter is required") }
        guard !path.utf8.contains(0) else { throw HTTPError(.badRequest, "the path contains a NUL byte") }
        if path.hasPrefix("/") { return path }
        if path == "~" { return home }
        if path.hasPrefix("~/") { return home + path.dropFirst(1) }
        return (home.hasSuffix("/") ? home : home + "/") + path
    }

    func user() async throws -> GuestUser {
        try await sandbox.user(request.query["username"].flatMap { $0.isEmpty ? nil : $0 } ?? Envd.basicUser(request))
    }

    func download() async throws {
        let user = try await self.user()
        let path = try FilesHTTP.resolve(request.query["path"] ?? "", home: user.home)
        try await Access.check(path, .read, user: user, sandbox: sandbox)
        let opened: (info: FileInfo, data: FileChunks)
        do { opened = try await sandbox.agent.openFile(path) } catch let e as AgentClientError {
            if case .failed(let f) = e {
                if f.errno == 2 { throw HTTPError(.notFound, "path '\(path)' does not exist") }
                if f.errno == 21 { throw HTTPError(.badRequest, "path '\(path)' is a directory") }
                throw HTTPError(.badRequest, f.message)
            }
            throw HTTPError(.badGateway, "the sandbox's agent is gone: \(e)")
        }
        let name = path.split(separator: "/").last.map(String.init) ?? "file"
        try await response.start(.ok, headers: [("content-type", "application/octet-stream"),
                                                ("content-disposition", "attachment; filename=\"\(name.replacing("\"", with: ""))\"")])
        do {
            for try await chunk in opened.data { try await response.write(ByteBuffer(bytes: chunk)) }
        } catch {
            opened.data.cancel()
            throw error // the response is cut short: the client sees a truncated chunked body
        }
        try await response.end()
    }

    func upload() async throws {
        let user = try await self.user()
        let contentType = request.header("content-type") ?? ""
        if request.header("content-encoding").map({ $0.lowercased() != "identity" }) == true {
            throw HTTPError(.unsupportedMediaType, "compressed uploads are not supported")
        }
        var written: [WriteInfo] = []
        if let boundary = MultipartReader.boundary(of: contentType) {
            let reader = MultipartReader(request, boundary: boundary)
            let single = request.query["path"]
            do {
                while let part = try await reader.nextPart() {
                    guard let target = (single.flatMap { $0.isEmpty ? nil : $0 }) ?? part.filename, !target.isEmpty else {
                        throw HTTPError(.badRequest, "a multipart part names no file (filename) and the request no path")
                    }
                    let path = try FilesHTTP.resolve(target, home: user.home)
                    try await write(path, user: user) { try await reader.nextData() }
                    written.append(WriteInfo(name: path.split(separator: "/").last.map(String.init) ?? path, type: "file", path: path))
                }
            } catch let e as MultipartReader.Failure {
                throw HTTPError(.badRequest, e.description)
            }
        } else if contentType.lowercased().hasPrefix("application/octet-stream") || contentType.isEmpty {
            let path = try FilesHTTP.resolve(request.query["path"] ?? "", home: user.home)
            try await write(path, user: user) { try await request.nextBodyChunk().map { Array($0.readableBytesView) } }
            written.append(WriteInfo(name: path.split(separator: "/").last.map(String.init) ?? path, type: "file", path: path))
        } else {
            throw HTTPError(.unsupportedMediaType, "uploads are multipart/form-data or application/octet-stream, not \(contentType)")
        }
        try await response.respond(.ok, headers: [("content-type", "application/json")], body: Connect.encode(written))
    }

    func write(_ path: String, user: GuestUser, next: () async throws -> [UInt8]?) async throws {
        try await Access.check(path, .write, user: user, sandbox: sandbox)
        do {
            _ = try await sandbox.agent.writeFile(path, mode: 0o644, uid: user.uid, gid: user.gid, options: [.createParents], from: next)
        } catch let e as AgentClientError {
            if case .failed(let f) = e {
                if f.errno == 28 { throw HTTPError(.insufficientStorage, "not enough disk space in the sandbox: \(f.message)") }
                if f.errno == 21 { throw HTTPError(.badRequest, "path '\(path)' is a directory") }
                throw HTTPError(.badRequest, "cannot write \(path): \(f.message)")
            }
            throw HTTPError(.badGateway, "the sandbox's agent is gone: \(e)")
        }
    }
}
