import AgentProtocol
import Glibc
import Sandbox
import Synchronization

/// A guest account, resolved from the guest's own /etc/passwd and /etc/group.
struct GuestUser: Sendable, Equatable {
    var name: String
    var uid: UInt32
    var gid: UInt32
    var groups: [UInt32]
    var home: String
    var shell: String
}

/// A running sandbox as the envd side of the service sees it: the agent session, the processes
/// started through the API (they outlive the request that started them), and the guest's users.
final class ServiceSandbox: Sendable {
    let id: String
    let sandbox: Sandbox
    let envVars: [String: String]
    let blocking: BlockingExecutor
    let processes = ProcessTable()
    let users = Mutex<[String: GuestUser]>([:])
    /// E2B's default user when a request names none.
    static let defaultUser = "user"

    init(id: String, sandbox: Sandbox, envVars: [String: String], blocking: BlockingExecutor) {
        self.id = id
        self.sandbox = sandbox
        self.envVars = envVars
        self.blocking = blocking
    }

    var agent: AgentClient { sandbox.agent }

    /// Ends the VM and everything in it.
    func close() async {
        let sandbox = self.sandbox
        _ = try? await blocking.run { sandbox.stop() }
        processes.endAll()
    }

    /// The account `name` names (default: E2B's `user`, or root where the image has no such user).
    func user(_ name: String?) async throws(EnvdError) -> GuestUser {
        let wanted = name ?? ServiceSandbox.defaultUser
        if let u = users.withLock({ $0[wanted] }) { return u }
        let passwd: [UInt8], group: [UInt8]
        do {
            passwd = try await agent.readFile("/etc/passwd").contents
            group = (try? await agent.readFile("/etc/group").contents) ?? []
        } catch {
            if wanted == "root" { return GuestUser(name: "root", uid: 0, gid: 0, groups: [], home: "/root", shell: "/bin/sh") }
            throw EnvdError(.invalidArgument, "cannot read the guest's /etc/passwd to find user '\(wanted)': \(error)")
        }
        let all = GuestUser.parse(passwd: passwd, group: group)
        users.withLock { cache in for u in all { cache[u.name] = u } }
        if let u = all.first(where: { $0.name == wanted }) { return u }
        if let uid = UInt32(wanted) { return all.first { $0.uid == uid } ?? GuestUser(name: wanted, uid: uid, gid: uid, groups: [], home: "/", shell: "/bin/sh") }
        if name == nil, let root = all.first(where: { $0.uid == 0 }) { return root }
        if wanted == "root" { return GuestUser(name: "root", uid: 0, gid: 0, groups: [], home: "/root", shell: "/bin/sh") }
        throw EnvdError(.invalidArgument, "invalid user: '\(wanted)' does not exist in the sandbox")
    }

    /// The environment of a process started as `user`: the sandbox's variables, then the request's.
    func environment(user: GuestUser, extra: [String: String]) -> [String] {
        var env: [String: String] = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell,
            "E2B_SANDBOX": "true", "E2B_SANDBOX_ID": id,
        ]
        for (k, v) in envVars { env[k] = v }
        for (k, v) in extra { env[k] = v }
        return env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }
}

extension GuestUser {
    static func parse(passwd: [UInt8], group: [UInt8]) -> [GuestUser] {
        func fields(_ bytes: [UInt8]) -> [[String]] {
            String(decoding: bytes, as: UTF8.self).split(separator: "\n").map {
                $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            }
        }
        let groups = fields(group).filter { $0.count >= 4 }
        return fields(passwd).compactMap { f in
            guard f.count >= 7, let uid = UInt32(f[2]), let gid = UInt32(f[3]) else { return nil }
            let extra = groups.compactMap { g -> UInt32? in
                g[3].split(separator: ",").contains(Substring(f[0])) ? UInt32(g[2]) : nil
            }
            return GuestUser(name: f[0], uid: uid, gid: gid, groups: [gid] + extra.filter { $0 != gid },
                             home: f[5].isEmpty ? "/" : f[5], shell: f[6].isEmpty ? "/bin/sh" : f[6])
        }
    }
}
