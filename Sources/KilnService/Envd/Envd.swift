import FoundationEssentials
import NIOCore
import NIOHTTP1

/// The in-sandbox API (envd's routes), reached on the service's listener with the sandbox named
/// by the `E2b-Sandbox-Id` header and authorised by its `X-Access-Token`.
struct Envd {
    let manager: SandboxManager

    /// envd's port in E2B's sandbox host names (`49983-ID.DOMAIN`).
    static let port: UInt16 = 49983

    func handle(_ request: HTTPRequest, _ response: HTTPResponseWriter, sandboxID: String) async throws {
        let sandbox: ServiceSandbox
        do { sandbox = try await manager.envdTarget(id: sandboxID, token: request.header("x-access-token")) } catch {
            // What E2B's proxy answers for a sandbox it does not know (the SDK reads 502 as "not running").
            struct Body: Encodable { var code: Int; var message: String; var sandboxId: String }
            try await response.respond(HTTPResponseStatus(statusCode: error.status), headers: [("content-type", "application/json")],
                                       body: Connect.encode(Body(code: error.status, message: error.message, sandboxId: sandboxID)))
            return
        }
        let path = request.path
        if path == "/health" {
            try await response.respond(.noContent)
        } else if path == "/files" {
            try await FilesHTTP(sandbox: sandbox, request: request, response: response).serve()
        } else if path.hasPrefix("/process.Process/") {
            try await ProcessRPC(sandbox: sandbox, request: request, response: response, userName: Envd.basicUser(request))
                .serve(method: String(path.dropFirst("/process.Process/".count)))
        } else if path.hasPrefix("/filesystem.Filesystem/") {
            try await FilesystemRPC(sandbox: sandbox, request: request, response: response, userName: Envd.basicUser(request))
                .serve(method: String(path.dropFirst("/filesystem.Filesystem/".count)))
        } else if path == "/envs" && request.method == .GET {
            try await response.respond(.ok, headers: [("content-type", "application/json")], body: Connect.encode(sandbox.envVars))
        } else {
            try await response.respond(.notFound, headers: [("content-type", "application/json")],
                                       body: Connect.encode(["code": "not_found", "message": "no route \(request.method) \(path)"]))
        }
    }

    /// The user named by `Authorization: Basic base64("user:")`, as the SDK sends it.
    static func basicUser(_ request: HTTPRequest) -> String? {
        guard let value = request.header("authorization"), value.lowercased().hasPrefix("basic ") else { return nil }
        guard let data = Data(base64Encoded: String(value.dropFirst(6)).trimmingSpacesString) else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        let user = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        return user.isEmpty ? nil : user
    }
}

extension String {
    var trimmingSpacesString: String { Substring(self).trimmingSpaces }
}
