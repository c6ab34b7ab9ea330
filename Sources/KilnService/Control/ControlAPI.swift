import FoundationEssentials
import NIOCore
import NIOHTTP1

/// E2B's control API (spec/openapi.yml): sandboxes created, listed, timed, paused, resumed and
/// killed per tenant, authenticated by `X-API-KEY`.
struct ControlAPI {
    let manager: SandboxManager
    let tenants: Tenants
    let metrics: Metrics
    static let bodyLimit = 1 << 20

    func handle(_ request: HTTPRequest, _ response: HTTPResponseWriter) async throws {
        let route = routeName(request), arrived = Timestamps.now()
        let status: Int
        do {
            status = try await dispatch(request, response, arrived: arrived)
        } catch let e as APIError {
            status = e.status
            if e.status >= 500 { metrics.count(error: "internal") }
            try await respond(response, e)
        } catch let e as HTTPError {
            status = Int(e.status.code)
            try await respond(response, APIError(Int(e.status.code), e.message))
        }
        metrics.count(request: route, status: status)
        metrics.observe(request: route, seconds: Timestamps.now() - arrived)
    }

    func respond(_ response: HTTPResponseWriter, _ e: APIError) async throws {
        guard !response.headSent else { return }
        try await response.respond(HTTPResponseStatus(statusCode: e.status), headers: [("content-type", "application/json")],
                                   body: Connect.encode(ErrorBody(code: e.status, message: e.message)))
    }

    func json<T: Encodable>(_ response: HTTPResponseWriter, _ status: HTTPResponseStatus, _ value: T, headers: [(String, String)] = []) async throws -> Int {
        try await response.respond(status, headers: [("content-type", "application/json")] + headers, body: Connect.encode(value))
        return Int(status.code)
    }

    func tenant(_ request: HTTPRequest) throws(APIError) -> Tenant {
        var key = request.header("x-api-key")
        if key == nil, let auth = request.header("authorization"), auth.lowercased().hasPrefix("bearer ") { key = String(auth.dropFirst(7)) }
        guard let key, !key.isEmpty else { throw APIError(401, "missing API key: send it in the X-API-KEY header") }
        guard let t = tenants.tenant(forKey: key) else { throw APIError(401, "invalid API key") }
        return t
    }

    func decode<T: Decodable>(_ type: T.Type, _ request: HTTPRequest, allowEmpty: Bool = false) async throws -> T? {
        let body = try await request.collectBody(limit: ControlAPI.bodyLimit)
        if body.readableBytes == 0 {
            if allowEmpty { return nil }
            throw APIError(400, "the request needs a JSON body")
        }
        if let type = request.header("content-type")?.lowercased(), !type.hasPrefix("application/json") {
            throw APIError(400, "the body must be application/json, not \(type)")
        }
        do { return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView)) } catch {
            metrics.count(error: "bad_request")
            throw APIError(400, "invalid request body: \(JSONErrors.describe(error))")
        }
    }

    func routeName(_ request: HTTPRequest) -> String {
        let parts = request.path.split(separator: "/")
        var out: [String] = []
        for (i, p) in parts.enumerated() { out.append(i > 0 && (parts[i - 1] == "sandboxes" || parts[i - 1] == "volumes") ? "{id}" : String(p)) }
        return "\(request.method.rawValue) /" + out.joined(separator: "/")
    }

    /// Routes the request; returns the status it answered with.
    func dispatch(_ request: HTTPRequest, _ response: HTTPResponseWriter, arrived: Double) async throws -> Int {
        let parts = request.path.split(separator: "/").map(String.init)
        let method = request.method
        // E2B answers its health check with 204.
        if parts == ["health"] { try await response.respond(.noContent); return 204 }
        let t = try tenant(request)
        if parts == ["metrics"], method == .GET {
            try await response.respond(.ok, headers: [("content-type", "text/plain; version=0.0.4")], body: ByteBuffer(string: metrics.render()))
            return 200
        }
        if parts == ["snapshots"], method == .GET {
            var saved = await manager.savedSnapshots(tenant: t).map(\.0)
            if let source = request.query["sandboxID"], !source.isEmpty { saved = saved.filter { $0.sandboxID == source } }
            return try await json(response, .ok, saved.map { SnapshotBody(snapshotID: $0.id, names: $0.names) })
        }
        if parts.count == 2, parts[0] == "templates", method == .DELETE {
            try await manager.deleteSnapshot(tenant: t, idOrName: parts[1])
            try await response.respond(.noContent)
            return 204
        }
        if parts.first == "volumes" { return try await volumes(parts.dropFirst(), request, response, tenant: t) }
        var p = parts[...]
        let v2 = p.first == "v2"
        if v2 { p = p.dropFirst() }
        guard p.first == "sandboxes" else { throw APIError(404, "no route \(method.rawValue) \(request.path)") }
        p = p.dropFirst()
        switch (method, p.count) {
        case (.POST, 0):
            guard let body = try await decode(NewSandboxRequest.self, request) else { throw APIError(400, "the request needs a JSON body") }
            let record = try await manager.create(tenant: t, body, arrived: arrived)
            return try await json(response, .created, await manager.created(record))
        case (.GET, 0):
            return try await list(request, response, tenant: t, v2: v2)
        case (.GET, 1):
            let r = try await manager.get(tenant: t, id: p.first!)
            return try await json(response, .ok, await manager.describe(r))
        case (.GET, 2) where p.last == "metrics":
            return try await json(response, .ok, await manager.metrics(tenant: t, id: p.first!))
        case (.DELETE, 1):
            try await manager.kill(tenant: t, id: p.first!)
            try await response.respond(.noContent)
            return 204
        case (.PUT, 2) where p.last == "network":
            guard let body = try await decode(NetworkRequest.self, request) else { throw APIError(400, "the request needs a JSON body") }
            try await manager.updateNetwork(tenant: t, id: p.first!, body)
            try await response.respond(.noContent)
            return 204
        case (.POST, 2):
            let id = p.first!
            switch p.last! {
            case "timeout":
                guard let body = try await decode(TimeoutRequest.self, request) else { throw APIError(400, "timeout is required") }
                try await manager.setTimeout(tenant: t, id: id, seconds: body.timeout)
            case "refreshes":
                let body = try await decode(RefreshRequest.self, request, allowEmpty: true)
                try await manager.setTimeout(tenant: t, id: id, seconds: body?.duration ?? 60)
            case "pause":
                try await manager.pause(tenant: t, id: id)
            case "resume":
                let body = try await decode(ResumeRequest.self, request, allowEmpty: true)
                let (r, resumed) = try await manager.connect(tenant: t, id: id, timeout: body?.timeout)
                guard resumed else { throw APIError(409, "sandbox \(id) is already running") }
                return try await json(response, .created, await manager.created(r))
            case "snapshots":
                struct Body: Decodable { var name: String? }
                let body = try await decode(Body.self, request, allowEmpty: true)
                let saved = try await manager.saveSnapshot(tenant: t, id: id, name: body?.name)
                return try await json(response, .created, SnapshotBody(snapshotID: saved.id, names: saved.names))
            case "fork":
                struct Body: Decodable { var count: Int?; var timeout: Int? }
                let body = try await decode(Body.self, request, allowEmpty: true)
                var out: [ForkResult] = []
                for result in try await manager.fork(tenant: t, id: id, count: body?.count ?? 1, timeout: body?.timeout) {
                    switch result {
                    case .success(let r): out.append(ForkResult(sandbox: await manager.created(r), error: nil))
                    case .failure(let e): out.append(ForkResult(sandbox: nil, error: ErrorBody(code: e.status, message: e.message)))
                    }
                }
                return try await json(response, .created, out)
            case "connect":
                let body = try await decode(ConnectRequest.self, request, allowEmpty: true)
                let (r, resumed) = try await manager.connect(tenant: t, id: id, timeout: body?.timeout)
                return try await json(response, resumed ? .created : .ok, await manager.created(r))
            default:
                throw APIError(404, "no route \(method.rawValue) \(request.path)")
            }
            try await response.respond(.noContent)
            return 204
        default:
            throw APIError(404, "no route \(method.rawValue) \(request.path)")
        }
    }

    /// E2B's volumes: `GET /volumes`, `POST /volumes` (201), `GET /volumes/{id}`, `DELETE /volumes/{id}` (204).
    func volumes(_ p: ArraySlice<String>, _ request: HTTPRequest, _ response: HTTPResponseWriter, tenant t: Tenant) async throws -> Int {
        switch (request.method, p.count) {
        case (.GET, 0):
            return try await json(response, .ok, await manager.listVolumes(tenant: t).map { VolumeBody(volumeID: $0.id, name: $0.name) })
        case (.POST, 0):
            guard let body = try await decode(NewVolumeRequest.self, request) else { throw APIError(400, "the request needs a JSON body") }
            let v = try await manager.createVolume(tenant: t, name: body.name)
            return try await json(response, .created, VolumeAndTokenBody(volumeID: v.id, name: v.name, token: v.token))
        case (.GET, 1):
            let v = try await manager.volume(tenant: t, id: p.first!)
            return try await json(response, .ok, VolumeAndTokenBody(volumeID: v.id, name: v.name, token: v.token))
        case (.DELETE, 1):
            try await manager.deleteVolume(tenant: t, id: p.first!)
            try await response.respond(.noContent)
            return 204
        default:
            throw APIError(404, "no route \(request.method.rawValue) \(request.path)")
        }
    }

    /// v1 lists running sandboxes; v2 filters by `state` (running,paused) and pages with
    /// `limit` and `nextToken` (the next page's token comes back in `x-next-token`).
    func list(_ request: HTTPRequest, _ response: HTTPResponseWriter, tenant t: Tenant, v2: Bool) async throws -> Int {
        var records = await manager.list(tenant: t)
        let states = Set((request.query["state"] ?? (v2 ? "running,paused" : "running")).split(separator: ",").map(String.init))
        for s in states where s != "running" && s != "paused" { throw APIError(400, "unknown state '\(s)' (running or paused)") }
        records = records.filter { states.contains($0.state.rawValue) }
        if let m = request.query["metadata"], !m.isEmpty {
            var wanted: [String: String] = [:]
            for pair in m.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                wanted[HTTPRequest.percentDecode(String(kv[0]), plusIsSpace: true)] = kv.count > 1 ? HTTPRequest.percentDecode(String(kv[1]), plusIsSpace: true) : ""
            }
            records = records.filter { r in wanted.allSatisfy { r.metadata[$0.key] == $0.value } }
        }
        var headers: [(String, String)] = []
        if v2 {
            let limit = try request.query["limit"].map { (s: String) throws(APIError) -> Int in
                guard let n = Int(s), n > 0, n <= 1000 else { throw APIError(400, "limit must be 1 to 1000") }
                return n
            } ?? 1000
            if let token = request.query["nextToken"], !token.isEmpty {
                guard let start = records.firstIndex(where: { $0.id == token }) else { throw APIError(400, "invalid nextToken") }
                records = Array(records[start...])
            }
            if records.count > limit {
                headers.append(("x-next-token", records[limit].id))
                records = Array(records.prefix(limit))
            }
        }
        var out: [SandboxDescription] = []
        for r in records {
            var d = await manager.describe(r)
            d.envdAccessToken = nil
            out.append(d)
        }
        return try await json(response, .ok, out, headers: headers)
    }
}
