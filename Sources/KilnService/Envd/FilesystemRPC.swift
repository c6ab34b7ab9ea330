import AgentProtocol
import FoundationEssentials
import LinuxSys
import NIOCore
import Sandbox
import Synchronization

/// envd's `filesystem.Filesystem` service (e2b-dev/infra packages/envd/spec/filesystem/filesystem.proto)
/// in proto3's JSON mapping, served by the agent's file operations (protocol 1.2), no guest process each.
enum FilesystemMessages {
    struct PathRequest: Decodable, Sendable { var path: String? }
    struct ListDirRequest: Decodable, Sendable { var path: String?; var depth: FlexInt? }
    struct MoveRequest: Decodable, Sendable { var source: String?; var destination: String? }
    struct WatchRequest: Decodable, Sendable { var path: String?; var recursive: Bool?; var includeEntry: Bool? }
    struct WatcherRequest: Decodable, Sendable { var watcherId: String? }

    struct Entry: Encodable, Sendable {
        var name: String
        var type: String
        var path: String
        var size: FlexInt
        var mode: UInt32
        var permissions: String
        var owner: String
        var group: String
        var modifiedTime: String
        var symlinkTarget: String?
        var isSymlink: Bool
    }
    struct EntryResponse: Encodable, Sendable { var entry: Entry }
    struct ListResponse: Encodable, Sendable { var entries: [Entry] }
    struct Empty: Encodable, Sendable {}
    struct Event: Encodable, Sendable { var name: String; var type: String; var entry: Entry? }
    struct WatcherCreated: Encodable, Sendable { var watcherId: String }
    struct WatcherEvents: Encodable, Sendable { var events: [Event] }
    struct WatchResponse: Encodable, Sendable {
        var start: Empty?
        var filesystem: Event?
        var keepalive: Empty?
    }
}

/// Directory watches made with CreateWatcher, polled with GetWatcherEvents (what the sync SDK uses).
final class Watchers: Sendable {
    final class Watcher: Sendable {
        let watch: RemoteWatch
        let events = Mutex<(queue: [WatchEvent], failure: String?)>(([], nil))
        init(_ w: RemoteWatch) { watch = w }
    }
    let watchers = Mutex<[String: Watcher]>([:])
    static let maxQueued = 10_000
    static let maxWatchers = 64

    func add(_ watch: RemoteWatch) throws(EnvdError) -> String {
        let w = Watcher(watch)
        let id = Random.hex(bytes: 12)
        let ok = watchers.withLock { t -> Bool in
            guard t.count < Watchers.maxWatchers else { return false }
            t[id] = w
            return true
        }
        guard ok else { watch.cancel(); throw EnvdError(.resourceExhausted, "at most \(Watchers.maxWatchers) watchers per sandbox") }
        Task(executorPreference: BlockingExecutor.service) {
            do {
                for try await e in watch.events {
                    w.events.withLock { s in if s.queue.count < Watchers.maxQueued { s.queue.append(e) } else { s.failure = "events were lost: the watcher was not polled" } }
                }
            } catch { w.events.withLock { $0.failure = "\(error)" } }
        }
        return id
    }

    func drain(_ id: String) throws(EnvdError) -> [WatchEvent] {
        guard let w = watchers.withLock({ $0[id] }) else { throw EnvdError(.notFound, "watcher \(id) not found") }
        let (events, failure) = w.events.withLock { s in defer { s.queue.removeAll() }; return (s.queue, s.failure) }
        if let failure, events.isEmpty { throw EnvdError(.internal, "the watch ended: \(failure)") }
        return events
    }

    func remove(_ id: String) throws(EnvdError) {
        guard let w = watchers.withLock({ $0.removeValue(forKey: id) }) else { throw EnvdError(.notFound, "watcher \(id) not found") }
        w.watch.cancel()
    }

    func removeAll() { for w in watchers.withLock({ t in defer { t.removeAll() }; return Array(t.values) }) { w.watch.cancel() } }
}

struct FilesystemRPC {
    typealias M = FilesystemMessages
    let sandbox: ServiceSandbox
    let request: HTTPRequest
    let response: HTTPResponseWriter
    let userName: String?

    func serve(method: String) async throws {
        switch method {
        case "Stat": try await unary { body in
            let path = try await resolve(try Connect.decode(M.PathRequest.self, body).path)
            return M.EntryResponse(entry: FilesystemRPC.entry(try await call { try await sandbox.agent.stat(path) }))
        }
        case "ListDir": try await unary { body in
            let r = try Connect.decode(M.ListDirRequest.self, body)
            let path = try await resolve(r.path)
            let depth = r.depth?.value ?? 1
            guard (0...64).contains(depth) else { throw EnvdError(.invalidArgument, "depth must be 1 to 64") }
            let entries = try await call { try await sandbox.agent.listDirectory(path, depth: UInt32(max(1, depth))) }
            return M.ListResponse(entries: entries.map(FilesystemRPC.entry))
        }
        case "MakeDir": try await unary { body in
            let path = try await resolve(try Connect.decode(M.PathRequest.self, body).path)
            let user = try await sandbox.user(userName)
            try await Access.check(path, .create, user: user, sandbox: sandbox)
            let created = try await call { try await sandbox.agent.makeDirectory(path, mode: 0o755, uid: user.uid, gid: user.gid) }
            guard created else { throw EnvdError(.alreadyExists, "directory '\(path)' already exists") }
            return M.EntryResponse(entry: FilesystemRPC.entry(try await call { try await sandbox.agent.stat(path) }))
        }
        case "Move": try await unary { body in
            let r = try Connect.decode(M.MoveRequest.self, body)
            let from = try await resolve(r.source), to = try await resolve(r.destination)
            let user = try await sandbox.user(userName)
            try await Access.check(from, .remove, user: user, sandbox: sandbox)
            try await Access.check(to, .create, user: user, sandbox: sandbox)
            return M.EntryResponse(entry: FilesystemRPC.entry(try await call { try await sandbox.agent.rename(from, to: to) }))
        }
        case "Remove": try await unary { body in
            let path = try await resolve(try Connect.decode(M.PathRequest.self, body).path)
            try await Access.check(path, .remove, user: try await sandbox.user(userName), sandbox: sandbox)
            try await call { try await sandbox.agent.remove(path) }
            return M.Empty()
        }
        case "CreateWatcher": try await unary { body in
            let r = try Connect.decode(M.WatchRequest.self, body)
            let path = try await resolve(r.path)
            let watch = try await call { try await sandbox.agent.watchDirectory(path, recursive: r.recursive ?? false) }
            return M.WatcherCreated(watcherId: try sandbox.watchers.add(watch))
        }
        case "GetWatcherEvents": try await unary { body in
            let r = try Connect.decode(M.WatcherRequest.self, body)
            return M.WatcherEvents(events: try sandbox.watchers.drain(r.watcherId ?? "").map(FilesystemRPC.event))
        }
        case "RemoveWatcher": try await unary { body in
            let r = try Connect.decode(M.WatcherRequest.self, body)
            try sandbox.watchers.remove(r.watcherId ?? "")
            return M.Empty()
        }
        case "WatchDir": try await watchStream()
        default:
            try await Connect.respond(response, error: EnvdError(.unimplemented, "filesystem.Filesystem/\(method) is not implemented"))
        }
    }

    func watchStream() async throws {
        let out = Connect.Stream(response)
        do {
            try Connect.checkCodec(request)
            guard let body = try await Connect.EnvelopeReader(request).next() else { throw EnvdError(.invalidArgument, "no WatchDirRequest in the body") }
            let r = try Connect.decode(M.WatchRequest.self, body)
            let path = try await resolve(r.path)
            let watch = try await call { try await sandbox.agent.watchDirectory(path, recursive: r.recursive ?? false) }
            defer { watch.cancel() }
            try await out.start()
            try await out.send(M.WatchResponse(start: M.Empty()))
            do {
                for try await e in watch.events { try await out.send(M.WatchResponse(filesystem: FilesystemRPC.event(e))) }
                try await out.finish()
            } catch let e as AgentClientError {
                try await out.finish(FilesystemRPC.map(e))
            }
        } catch let e as EnvdError {
            if !response.headSent { try await out.start() }
            try await out.finish(e)
        }
    }

    // MARK: Helpers

    func resolve(_ path: String?) async throws -> String {
        let user = try await sandbox.user(userName)
        do { return try FilesHTTP.resolve(path ?? "", home: user.home) } catch { throw EnvdError(.invalidArgument, error.message) }
    }

    func call<T>(_ body: () async throws -> T) async throws(EnvdError) -> T {
        do { return try await body() } catch let e as AgentClientError { throw FilesystemRPC.map(e) } catch let e as EnvdError { throw e } catch {
            throw EnvdError(.internal, "\(error)")
        }
    }

    static func map(_ e: AgentClientError) -> EnvdError {
        if case .failed(let f) = e { return EnvdError.from(errno: f.errno, f.message) }
        return EnvdError(.unavailable, "the sandbox's agent is gone: \(e)")
    }

    func unary<T: Encodable>(_ body: (ByteBuffer) async throws -> T) async throws {
        try await Connect.unary(request, response, body)
    }

    static func typeName(_ k: EntryInfo.Kind) -> String {
        switch k {
        case .file: "FILE_TYPE_FILE"
        case .directory: "FILE_TYPE_DIRECTORY"
        case .symlink: "FILE_TYPE_SYMLINK"
        case .other: "FILE_TYPE_UNSPECIFIED"
        }
    }

    /// envd's EntryInfo: a symlink reports its target's type with `isSymlink` set (newer envd).
    static func entry(_ e: EntryInfo) -> M.Entry {
        let kind = e.symlink.map { $0.targetKind } ?? e.kind
        return M.Entry(name: e.name, type: typeName(kind), path: e.path, size: FlexInt(Int64(e.size)), mode: e.mode,
                       permissions: permissions(e.kind, e.mode), owner: e.owner, group: e.group,
                       modifiedTime: Timestamps.rfc3339(Double(e.modifiedSeconds) + Double(e.modifiedNanoseconds) / 1e9),
                       symlinkTarget: e.symlink.map { $0.resolved.isEmpty ? $0.target : $0.resolved }, isSymlink: e.kind == .symlink)
    }

    /// As Go's os.FileMode prints it ("drwxr-xr-x", "-rw-r--r--", "Lrwxrwxrwx").
    static func permissions(_ kind: EntryInfo.Kind, _ mode: UInt32) -> String {
        var s = kind == .directory ? "d" : kind == .symlink ? "L" : "-"
        for (i, c) in "rwxrwxrwx".enumerated() { s += mode & (1 << (8 - i)) != 0 ? String(c) : "-" }
        return s
    }

    static func event(_ e: WatchEvent) -> M.Event {
        let type: String
        switch e.kind {
        case .create: type = "EVENT_TYPE_CREATE"
        case .write: type = "EVENT_TYPE_WRITE"
        case .remove: type = "EVENT_TYPE_REMOVE"
        case .rename: type = "EVENT_TYPE_RENAME"
        case .chmod: type = "EVENT_TYPE_CHMOD"
        }
        return M.Event(name: e.name, type: type, entry: nil)
    }
}
