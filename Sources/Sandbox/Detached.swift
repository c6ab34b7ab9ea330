import AgentProtocol
import Glibc
import Jailer
import LinuxSys
import VMMProtocol

// Detached sandboxes (docs/security.md, "Detached sandboxes"): a VMM that outlives the process
// that started it, recorded in its runtime directory so that another process can adopt it
// (reach its agent and its commands, stop it) or, once it has died, remove what it left.

extension Sandbox {
    /// How long a sandbox's VMM lives.
    public enum Lifetime: Sendable, Equatable {
        /// It is killed when the process (the thread) that started it ends: the default.
        case tiedToProcess
        /// It runs on after this process ends (its own session, no parent-death signal), until
        /// `stop()` on this or an adopted `Sandbox`. Jailed VMMs only. Its runtime directory
        /// holds `sandbox.record`, `commands.sock` and `vsock.sock`; guest connections to host
        /// sockets (`vsock.sock_P`) work only while the process that started it lives.
        case detached
    }

    static let recordName = "sandbox.record"
    static let commandSocketName = "commands.sock"

    static func checkLifetime(_ lifetime: Lifetime, _ isolation: Isolation) throws(SandboxError) {
        if lifetime == .detached && !isolation.jails {
            throw .setup("a detached sandbox needs a jailed VMM (root, and isolation .automatic or .jailed): a VMM thread cannot outlive its process")
        }
    }

    /// Takes over the running detached sandbox in `directory` (a runtime directory made by
    /// `start`/`restore` with `lifetime: .detached`, maybe by a process that has since died):
    /// checks that its VMM is still the recorded process, connects to its command socket and
    /// its agent (a fresh handshake), and returns a `Sandbox` like the one `start` returned:
    /// `stop()` kills the VMM and removes its jail, cgroup and directory; `snapshot(to:)` works.
    /// Throws `.vmGone` (having removed the leftovers) when the VMM no longer runs.
    public static func adopt(directory: String, timeout: Double = 30) async throws(SandboxError) -> Sandbox {
        let record = try readRecord(directory)
        let identity = ProcessIdentity(pid: record.pid, startTime: record.startTime, bootID: record.bootID)
        func gone() -> SandboxError {
            reap(record, directory: directory)
            return .vmGone(directory: directory)
        }
        guard identity.isAlive else { throw gone() }
        // A VM its previous owner parked (idle parking) answers nothing until resumed.
        do {
            let channel = try UnixSocket.connectMessages(path: record.commandSocket)
            try UnixSocket.sendMessage(channel.raw, Array(VMMCommand.resume.text.utf8))
            _ = try UnixSocket.receiveMessage(channel.raw, capacity: 256)
        } catch {} // no channel: the agent loop below reports what is wrong
        // The agent first: until it answers, nothing here waits for or would stop the VMM.
        let deadline = monotonicSeconds() + timeout
        var client: AgentClient?
        while client == nil {
            let wait = min(10, max(1, deadline - monotonicSeconds()))
            if let socket = connectToGuest(record.vsockPath, port: agentPort, timeout: wait) {
                do { client = try AgentClient(socket: socket, software: "kiln") } catch {
                    if case .connection = error {} else { throw .agent(error) }
                }
            }
            if client != nil { break }
            guard identity.isAlive else { throw gone() }
            // Left running: the caller may try again later.
            if monotonicSeconds() > deadline { throw .agentTimeout(seconds: timeout, console: consoleTail(directory + "/console.log")) }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        let host: JailedVM
        do { host = try JailedVM(adopting: record) } catch {
            client?.close()
            if case .vmGone = error { throw gone() }
            throw error
        }
        return Sandbox(agent: client!, directory: directory, host: host, consoleFD: -1)
    }

    /// Removes every detached sandbox under `base` whose VMM no longer runs (its jail directory,
    /// cgroup, sockets and runtime directory), and runtime directories a SIGKILLed process left.
    /// Returns the runtime directories removed. Running sandboxes are left alone.
    @discardableResult
    public static func sweepDead(in base: String = Sandbox.defaultRuntimeDirectory) -> [String] {
        var removed: [String] = []
        for name in Files.entries(base) where name.hasPrefix("sandbox-") {
            let dir = base + "/" + name
            if access(dir + "/" + recordName, F_OK) == 0 || access(dir + "/" + recordName + ".tmp", F_OK) == 0 {
                if reapIfDead(dir) { removed.append(dir) }
            } else if Supervisor.isStale(String(name.dropFirst("sandbox-".count))) {
                Files.removeFlatDirectory(dir)
                removed.append(dir)
            }
        }
        return removed
    }

    /// The runtime directories under `base` that hold a detached sandbox whose VMM still runs
    /// (what a restarted service adopts).
    public static func detachedSandboxes(in base: String = Sandbox.defaultRuntimeDirectory) -> [String] {
        Files.entries(base).filter { $0.hasPrefix("sandbox-") }.sorted().map { base + "/" + $0 }.filter { dir in
            guard let record = try? readRecord(dir) else { return false }
            return ProcessIdentity(pid: record.pid, startTime: record.startTime, bootID: record.bootID).isAlive
        }
    }

    /// Kills the detached sandbox in `directory` without reaching its agent (a VM nobody will
    /// use again, such as a service's pooled sandbox left by a service that died) and removes
    /// its jail, cgroup, sockets and runtime directory.
    public static func killDetached(directory: String) {
        guard let record = try? readRecord(directory) else { _ = reapIfDead(directory); return }
        if let host = try? JailedVM(adopting: record) { host.stop() }
        reap(record, directory: directory)
    }

    static func readRecord(_ directory: String) throws(SandboxError) -> VMMRecord {
        guard let bytes = Files.read(directory + "/" + recordName) else {
            throw .notAdoptable(directory: directory, why: "no readable \(recordName) (not a detached sandbox)")
        }
        do { return try VMMRecord.decode(bytes) } catch {
            throw .notAdoptable(directory: directory, why: "\(recordName): \(error)")
        }
    }

    /// Removes the detached sandbox in `directory` if its VMM is gone; true if it did. A record
    /// that cannot be read is treated as its creator's: removed once that process is gone.
    static func reapIfDead(_ directory: String) -> Bool {
        guard let record = try? readRecord(directory) else {
            let name = String(directory.split(separator: "/").last ?? "")
            guard Supervisor.isStale(String(name.dropFirst("sandbox-".count))) else { return false }
            Files.removeFlatDirectory(directory)
            return true
        }
        guard !ProcessIdentity(pid: record.pid, startTime: record.startTime, bootID: record.bootID).isAlive else { return false }
        reap(record, directory: directory)
        return true
    }

    static func reap(_ record: VMMRecord, directory: String) {
        JailedVMM.reap(record)
        Files.removeFlatDirectory(directory)
    }
}
