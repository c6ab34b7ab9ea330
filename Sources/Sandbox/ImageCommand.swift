import AgentProtocol
import FoundationEssentials
import Images

/// What a sandbox command runs as: an image's run config (OCI image-spec config.md) with the
/// user's overrides applied (docs/images.md, "Booting an image"). Sandbox commands are exec-like:
/// a command given by the user replaces both the image's Entrypoint and its Cmd, as
/// `docker run --entrypoint CMD` would, rather than being appended to the Entrypoint.
public struct ImageCommand: Sendable, Equatable {
    /// The PATH a command gets when the image's Env and the user set none.
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    public var argv: [String]
    /// "NAME=value", without HOME when the user's home is still to be looked up (`resolve`).
    public var environment: [String]
    /// Empty: "/".
    public var workingDirectory: String
    /// The image's or the user's `User` ("name", "uid", "name:group", "uid:gid"); nil: root.
    public var user: String?

    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// Neither the user nor the image gave a command.
        case noCommand
        /// A `User` that names no user or group of the image.
        case unknownUser(String, why: String)

        public var description: String {
            switch self {
            case .noCommand: "the image has no command (no Entrypoint or Cmd): give one after --"
            case .unknownUser(let user, let why): "cannot run as user '\(user)': \(why)"
            }
        }
    }

    /// The command for `config` (nil: an image with no run config, as Kiln's own) and the user's
    /// `command` (empty: the image's), `environment` ("NAME=value", applied after the image's
    /// Env, a later entry replacing an earlier one of the same name), `workingDirectory` (nil:
    /// the image's WorkingDir) and `user` (nil: the image's User).
    public init(config: ImageConfiguration.RunConfig?, command: [String] = [], environment: [String] = [],
                workingDirectory: String? = nil, user: String? = nil) throws(Failure) {
        argv = command.isEmpty ? (config?.Entrypoint ?? []) + (config?.Cmd ?? []) : command
        guard !argv.isEmpty else { throw .noCommand }
        var env: [String] = []
        for item in (config?.Env ?? []) + environment {
            let name = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
            env.removeAll { $0.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0] == name }
            env.append(item)
        }
        if !env.contains(where: { $0.hasPrefix("PATH=") }) { env.insert("PATH=" + Self.defaultPath, at: 0) }
        self.environment = env
        self.workingDirectory = workingDirectory ?? config?.WorkingDir ?? ""
        let u = user ?? config?.User
        self.user = (u?.isEmpty ?? true) ? nil : u
    }

    /// The agent's Exec for this command: `user` resolved in the guest's /etc/passwd and
    /// /etc/group (numbers need neither, as on a scratch image), HOME set from the user's entry
    /// when the environment has none.
    public func exec(through agent: AgentClient, pty: WindowSize? = nil, timeoutMillis: UInt32 = 0) async throws -> Exec {
        let id = try await resolveUser(agent)
        var env = environment
        if !env.contains(where: { $0.hasPrefix("HOME=") }) { env.append("HOME=" + id.home) }
        return Exec(argv: argv, environment: env, workingDirectory: workingDirectory, uid: id.uid, gid: id.gid,
                    groups: id.groups, pty: pty, timeoutMillis: timeoutMillis)
    }

    public struct Identity: Equatable, Sendable { public var uid: UInt32, gid: UInt32, groups: [UInt32], home: String }

    /// Who `user` (the image's User, or -u) is inside the guest: root when nil.
    public func resolveUser(_ agent: AgentClient) async throws -> Identity {
        guard let user else { return Identity(uid: 0, gid: 0, groups: [], home: "/root") }
        let parts = user.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let name = parts[0], group = parts.count > 1 ? parts[1] : nil
        var id: Identity
        if let found = try await lookUp(name, agent) {
            id = Identity(uid: found.uid, gid: found.gid, groups: found.groups, home: found.home)
        } else if let uid = UInt32(name) {
            // Not in /etc/passwd (or no such file): the number as it is, group 0, as runc does.
            id = Identity(uid: uid, gid: 0, groups: [], home: "/")
        } else {
            throw Failure.unknownUser(user, why: "no user '\(name)' in the image's /etc/passwd")
        }
        if let group {
            let gid: UInt32
            if let n = UInt32(group) { gid = n } else {
                let text = (try? await agent.readFile("/etc/group")).map { String(decoding: $0.contents, as: UTF8.self) } ?? ""
                guard let g = Self.groupID(named: group, in: text) else {
                    throw Failure.unknownUser(user, why: "no group '\(group)' in the image's /etc/group")
                }
                gid = g
            }
            // An explicit group is the only one, as `docker run -u user:group` gives.
            id.gid = gid
            id.groups = [gid]
        }
        return id
    }

    /// The user from the agent (protocol 1.2 LookupUser); nil when the guest has no such entry.
    func lookUp(_ name: String, _ agent: AgentClient) async throws -> UserInfo? {
        do { return try await agent.lookupUser(name) } catch AgentClientError.failed(let f) where f.errno == 2 /* ENOENT */ {
            return nil
        }
    }

    /// The gid of group `name` in the text of an /etc/group file.
    static func groupID(named name: String, in text: String) -> UInt32? {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            if f.count >= 3, f[0] == name, let gid = UInt32(f[2]) { return gid }
        }
        return nil
    }
}

extension ImageConfiguration.RunConfig {
    /// The run config in `json`: an image configuration blob (its `config` member), or a run
    /// config object by itself (what a template keeps).
    public static func decode(json: [UInt8]) throws -> ImageConfiguration.RunConfig {
        let data = Data(json)
        if let config = try JSONDecoder().decode(ImageConfiguration.self, from: data).config { return config }
        return try JSONDecoder().decode(ImageConfiguration.RunConfig.self, from: data)
    }

    public func json() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }
}
