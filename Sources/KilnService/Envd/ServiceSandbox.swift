import AgentProtocol
import Glibc
import Images
import LinuxSys
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
    /// The OCI image's run config when the sandbox's template is an image (docs/images.md): its
    /// Env, WorkingDir and User are the defaults of every process started through the API.
    let image: ImageConfiguration.RunConfig?
    let blocking: BlockingExecutor
    /// The launcher's index of its network (Networks.swift); nil: none.
    let networkIndex: Int?
    let processes = ProcessTable()
    let watchers = Watchers()
    let users = Mutex<[String: GuestUser]>([:])
    /// E2B's default user when a request names none.
    static let defaultUser = "user"

    init(id: String, sandbox: Sandbox, envVars: [String: String], image: ImageConfiguration.RunConfig? = nil, blocking: BlockingExecutor,
         networkIndex: Int? = nil) {
        self.id = id
        self.networkIndex = networkIndex
        self.sandbox = sandbox
        self.envVars = envVars
        self.image = image
        self.blocking = blocking
    }

    var agent: AgentClient { sandbox.agent }

    /// Ends the VM and everything in it.
    func close() async {
        let sandbox = self.sandbox
        watchers.removeAll()
        _ = try? await blocking.run { sandbox.stop() }
        processes.endAll()
    }

    /// Starts `exec` as a process that outlives the agent connection (so a pause, a resume or a
    /// restart of the service keeps it), with envd's tag; an agent before protocol 1.2 gets a plain Exec.
    func spawn(_ exec: Exec, tag: String?, config: ServiceProcess.Config) async throws -> ServiceProcess {
        let remote: RemoteProcess
        if agent.version.minor >= 2 {
            remote = try await agent.exec(exec, keep: true, tag: tag ?? "")
        } else {
            remote = try await agent.exec(exec)
        }
        let process = ServiceProcess(pid: remote.pid, tag: tag, config: config, pty: exec.pty != nil, remote: remote)
        return process
    }

    /// Starts moving a process's output to its readers.
    func track(_ process: ServiceProcess) {
        processes.add(process)
        let table = processes
        Task(executorPreference: BlockingExecutor.service) { await process.pump(table: table) }
    }

    /// After a restore or an adoption the agent still runs the processes started through the API
    /// (kept ones): attach to each running one so that List, Connect, input and signals find it.
    func reattach() async {
        guard agent.version.minor >= 2, let list = try? await agent.listProcesses() else { return }
        for summary in list where summary.flags.contains(.kept) && !summary.flags.contains(.exited) {
            guard let remote = try? await agent.attach(pid: summary.pid) else { continue }
            var envs: [String: String] = [:]
            for entry in summary.environment {
                let kv = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if kv.count == 2 { envs[String(kv[0])] = String(kv[1]) }
            }
            let config = ServiceProcess.Config(cmd: summary.argv.first ?? "", args: Array(summary.argv.dropFirst()), envs: envs,
                                               cwd: summary.workingDirectory.isEmpty ? nil : summary.workingDirectory)
            track(ServiceProcess(pid: summary.pid, tag: summary.tag.isEmpty ? nil : summary.tag, config: config,
                                 pty: summary.flags.contains(.pty), remote: remote))
        }
    }

    /// The account `name` names (default: E2B's `user`, or root where the image has no such
    /// user), looked up by the agent in the guest's /etc/passwd and /etc/group.
    func user(_ name: String?) async throws(EnvdError) -> GuestUser {
        if name == nil, let imageUser = image?.User, !imageUser.isEmpty { return try await self.imageUser(imageUser) }
        let wanted = name ?? ServiceSandbox.defaultUser
        if let u = users.withLock({ $0[wanted] }) { return u }
        let found: GuestUser
        do {
            let u = try await agent.lookupUser(wanted)
            found = GuestUser(name: u.name, uid: u.uid, gid: u.gid, groups: u.groups, home: u.home.isEmpty ? "/" : u.home,
                              shell: u.shell.isEmpty ? "/bin/sh" : u.shell)
        } catch AgentClientError.failed(let f) where f.errno == 2 {
            if name == nil { return try await user("root") }
            throw EnvdError(.invalidArgument, "invalid user: '\(wanted)' does not exist in the sandbox")
        } catch {
            throw EnvdError(.unavailable, "cannot look up user '\(wanted)' in the sandbox: \(error)")
        }
        users.withLock { $0[wanted] = found }
        return found
    }

    /// The image's User ("name", "uid", "name:group", "uid:gid"), resolved in the image as `kiln run` does.
    func imageUser(_ spec: String) async throws(EnvdError) -> GuestUser {
        let key = "\u{0}image"
        if let u = users.withLock({ $0[key] }) { return u }
        let id: ImageCommand.Identity
        do { id = try await ImageCommand(config: image, command: ["true"]).resolveUser(agent) } catch {
            throw EnvdError(.invalidArgument, "the image's user '\(spec)': \(error)")
        }
        let found = GuestUser(name: String(spec.split(separator: ":").first ?? ""), uid: id.uid, gid: id.gid, groups: id.groups,
                              home: id.home, shell: "/bin/sh")
        users.withLock { $0[key] = found }
        return found
    }

    /// Where a process starts when the request names no directory: the image's WorkingDir, else the user's home.
    func defaultWorkingDirectory(_ user: GuestUser) -> String {
        if let dir = image?.WorkingDir, !dir.isEmpty { return dir }
        return user.home
    }

    /// The environment of a process started as `user`: the image's Env, the sandbox's variables, then the request's.
    func environment(user: GuestUser, extra: [String: String]) -> [String] {
        var env: [String: String] = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell,
            "E2B_SANDBOX": "true", "E2B_SANDBOX_ID": id,
        ]
        for item in image?.Env ?? [] {
            guard let eq = item.firstIndex(of: "=") else { continue }
            env[String(item[..<eq])] = String(item[item.index(after: eq)...])
        }
        for (k, v) in envVars { env[k] = v }
        for (k, v) in extra { env[k] = v }
        return env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }
}
