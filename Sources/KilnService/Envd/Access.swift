import AgentProtocol
import Sandbox

/// envd does file operations as the request's user; Kiln's agent runs as root. So before acting
/// for a user other than root, the service checks the owner/group/other permission bits as the
/// kernel would (ACLs and capabilities are not looked at): search permission on the directories
/// on the way, and read or write on the target (or write on the directory an entry is made in
/// or removed from).
enum Access {
    enum Need { case read, write, create, remove }

    static func check(_ path: String, _ need: Need, user: GuestUser, sandbox: ServiceSandbox) async throws(EnvdError) {
        guard user.uid != 0 else { return }
        let parts = path.split(separator: "/").map(String.init)
        // Every existing directory above the target must be searchable; the deepest one is where
        // a new entry (and any missing parents) would be made.
        var ancestors = ["/"]
        for part in parts.dropLast() { ancestors.append((ancestors.count == 1 ? "" : ancestors.last!) + "/" + part) }
        var deepestExisting: EntryInfo?
        for dir in ancestors {
            guard let e = try await stat(dir, sandbox) else { break }
            guard allowed(e, mask: 1, user) else { throw denied(path, user) }
            deepestExisting = e
        }
        let target = try await stat(path, sandbox)
        switch need {
        case .read:
            if let target, !allowed(target, mask: 4, user) { throw denied(path, user) }
        case .write, .create:
            if let target, target.kind != .directory {
                guard allowed(target, mask: 2, user) else { throw denied(path, user) }
            } else if target == nil, let dir = deepestExisting {
                guard allowed(dir, mask: 2, user) else { throw denied(path, user) }
            }
        case .remove:
            if target != nil, let dir = deepestExisting, !allowed(dir, mask: 2, user) { throw denied(path, user) }
        }
    }

    static func stat(_ path: String, _ sandbox: ServiceSandbox) async throws(EnvdError) -> EntryInfo? {
        do {
            let e = try await sandbox.agent.stat(path)
            if let link = e.symlink, link.targetKind != .other {
                var resolved = e
                resolved.kind = link.targetKind
                resolved.mode = link.targetMode
                return resolved
            }
            return e
        } catch AgentClientError.failed(let f) where f.errno == 2 || f.errno == 20 {
            return nil
        } catch {
            throw EnvdError(.unavailable, "cannot check permissions in the sandbox: \(error)")
        }
    }

    /// Whether `mask` (4 read, 2 write, 1 search/execute) is granted to `user` by `e`'s bits.
    static func allowed(_ e: EntryInfo, mask: UInt32, _ user: GuestUser) -> Bool {
        if e.uid == user.uid { return e.mode & (mask << 6) != 0 }
        if e.gid == user.gid || user.groups.contains(e.gid) { return e.mode & (mask << 3) != 0 }
        return e.mode & mask != 0
    }

    static func denied(_ path: String, _ user: GuestUser) -> EnvdError {
        EnvdError(.permissionDenied, "permission denied: user '\(user.name)' may not access '\(path)'")
    }
}
