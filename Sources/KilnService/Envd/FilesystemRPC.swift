import FoundationEssentials
import NIOCore

/// envd's `filesystem.Filesystem` service. Filled in once the agent protocol has file operations.
struct FilesystemRPC {
    let sandbox: ServiceSandbox
    let request: HTTPRequest
    let response: HTTPResponseWriter
    let userName: String?

    func serve(method: String) async throws {
        try await Connect.respond(response, error: EnvdError(.unimplemented, "filesystem.Filesystem/\(method) is not implemented yet"))
    }
}
