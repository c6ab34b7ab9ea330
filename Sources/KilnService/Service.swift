import Logging
import NIOCore
import NIOHTTP1

/// `kiln serve`: one listener for E2B's control API and for the in-sandbox (envd) API, which
/// the SDK sends to the same URL with the sandbox named in the `E2b-Sandbox-Id` header.
public struct Service: HTTPHandler {
    public let manager: SandboxManager
    let control: ControlAPI
    let envd: Envd
    let logger: Logger

    public init(manager: SandboxManager, tenants: Tenants, logger: Logger) {
        self.manager = manager
        self.logger = logger
        control = ControlAPI(manager: manager, tenants: tenants, metrics: manager.metrics)
        envd = Envd(manager: manager)
    }

    public func handle(_ request: HTTPRequest, _ response: HTTPResponseWriter) async {
        do {
            // E2B's sandbox host names, `PORT-ID.DOMAIN`: envd's port is the envd API, any other
            // a port in the guest (PortProxy).
            if let host = request.header("host"), let (port, id) = PortProxy.target(host: host) {
                if port == Envd.port {
                    try await envd.handle(request, response, sandboxID: id)
                } else {
                    try await PortProxy.serve(request, response, manager: manager, sandboxID: id, port: port)
                }
            } else if let id = request.header("e2b-sandbox-id") {
                try await envd.handle(request, response, sandboxID: id)
            } else {
                try await control.handle(request, response)
            }
        } catch {
            // The client went away mid-response, or a handler failed before answering.
            logger.debug("\(request.method) \(request.path): \(error)")
            if !response.headSent {
                try? await response.respond(.internalServerError, headers: [("content-type", "application/json")],
                                            body: Connect.encode(ErrorBody(code: 500, message: "\(error)")))
            }
        }
    }

    /// WebSocket upgrades to a port in a sandbox (PortProxy); any other upgrade is an ordinary request.
    public func upgrade(_ head: HTTPRequestHead) async -> HTTPUpgradeAnswer? {
        guard let host = head.headers.first(name: "host"), let (port, id) = PortProxy.target(host: host), port != Envd.port else { return nil }
        return await PortProxy.upgrade(head, manager: manager, sandboxID: id, port: port)
    }
}
