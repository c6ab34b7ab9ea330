import FoundationEssentials
@testable import KilnService
import Logging
import NIOCore

/// `kiln serve`'s HTTP stack in process: a real HTTPServer on 127.0.0.1 port 0 in front of a
/// SandboxManager with its own state directory.
final class TestServer: Sendable {
    let port: Int
    let manager: SandboxManager
    let stateDirectory: String
    let task: Task<Void, any Error>

    init(port: Int, manager: SandboxManager, stateDirectory: String, task: Task<Void, any Error>) {
        self.port = port; self.manager = manager; self.stateDirectory = stateDirectory; self.task = task
    }

    /// Templates the unit tests know: none. A real resolver answers an unknown name with 404.
    static let noTemplates: SandboxManager.TemplateResolver = { name in throw APIError(404, "template '\(name)' not found") }

    /// The unit tests' default: no warm pools (a test that wants one says so).
    static let noPools: PoolSettings = {
        var p = PoolSettings()
        p.defaultSize = 0
        return p
    }()

    /// Starts a server; `seed` writes sandbox records into the state directory before the manager
    /// recovers them (paused ones need no VM).
    static func start(tenants: [Tenant], resolve: @escaping SandboxManager.TemplateResolver = noTemplates,
                      seed: [SandboxRecord] = [], pool: PoolSettings = TestServer.noPools,
                      idlePause: Double? = SandboxManager.defaultIdlePause,
                      configure: (inout SandboxManager.Settings) -> Void = { _ in }) async throws -> TestServer {
        let dir = Temp.directory("kiln-svc-state")
        var logger = Logger(label: "kiln.serve.test")
        logger.logLevel = .error
        let t = try Tenants(tenants)
        var settings = SandboxManager.Settings(stateDirectory: dir)
        settings.pool = pool
        settings.idlePause = idlePause
        configure(&settings)
        let manager = try SandboxManager(settings: settings, tenants: t, resolveTemplate: resolve,
                                         metrics: Metrics(), logger: logger)
        for record in seed {
            Temp.write(dir + "/sandboxes/\(record.id).json", String(decoding: try JSONEncoder().encode(record), as: UTF8.self))
        }
        await manager.recover()
        await manager.startPools()
        let service = Service(manager: manager, tenants: t, logger: logger)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let task = Task {
            defer { continuation.finish() }
            try await HTTPServer(host: "127.0.0.1", port: 0, logger: logger).run(handler: service) { address in
                continuation.yield(address.port ?? 0)
            }
        }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            _ = try await task.value
            throw RawHTTP.Failure(description: "the server did not start")
        }
        return TestServer(port: port, manager: manager, stateDirectory: dir, task: task)
    }

    func request(_ method: String, _ path: String, key: String? = nil, headers: [(String, String)] = [], body: String? = nil) async throws -> RawHTTP.Response {
        var h = headers
        if let key { h.append(("x-api-key", key)) }
        if body != nil, !h.contains(where: { $0.0.lowercased() == "content-type" }) { h.append(("content-type", "application/json")) }
        return try await RawHTTP.request(port: port, method, path, headers: h, body: body.map { Array($0.utf8) })
    }

    /// Ends every sandbox the server still has, the listener and the state directory.
    func stop() async {
        await manager.killAll()
        task.cancel()
        await manager.shutdown()
        Temp.remove(stateDirectory)
    }
}

extension SandboxManager {
    func killAll() async {
        for e in Array(entries.values) { await kill(e) }
    }
}

/// A server shared by a suite's tests (which run in parallel), started once.
actor SharedServer {
    let start: @Sendable () async throws -> TestServer
    var server: Task<TestServer, any Error>?
    init(_ start: @escaping @Sendable () async throws -> TestServer) { self.start = start }

    func get() async throws -> TestServer {
        if server == nil {
            let start = self.start
            server = Task {
                let s = try await start()
                Temp.removeAtExit(s.stateDirectory)
                return s
            }
        }
        return try await server!.value
    }
}

/// E2B's `Error` body.
struct ErrorReply: Decodable, Equatable { var code: Int; var message: String }
