import Glibc
import Jailer
import KilnNet
import Synchronization

/// Sandbox networks for `kiln serve`, set up by its launcher (`kiln __launcher`): the confined
/// service runs no program and makes no namespace or mount, and a network needs `ip`, `nft`,
/// `unshare` and a bind mount (docs/net.md, "Networks in the service"). The launcher names each
/// network under its own runtime directory until the service gives it back, so that the
/// service can change a running sandbox's policy (E2B's `PUT /sandboxes/{id}/network`).
///
/// The requests, on the launcher's socket (`VMMLauncher.request`), NUL-separated:
/// `net-create POLICY` -> `ok INDEX`; `net-update INDEX POLICY` -> `ok`; `net-release INDEX` -> `ok`;
/// anything else -> one line saying what failed. POLICY is `EgressPolicy.file(hostAddresses: [])`. The launcher
/// takes no path from the service: a network is named by its pool index only.
public struct LauncherNetworks: Sendable {
    let launcher: VMMLauncher
    /// Where the launcher names networks (its `Sandbox.defaultRuntimeDirectory`).
    let runtimeBase: String

    public init(launcher: VMMLauncher, runtimeBase: String = Sandbox.defaultRuntimeDirectory) {
        self.launcher = launcher; self.runtimeBase = runtimeBase
    }

    /// A new network with `policy`, named until `close()` (or `release`) gives it back. Blocking.
    public func create(_ policy: EgressPolicy) throws(NetworkError) -> SandboxNetwork {
        let answer = try ask(["net-create", policy.file(hostAddresses: [])])
        guard let index = Int(answer) else { throw .setup("the launcher answered '\(answer)'") }
        return named(index, policy)
    }

    /// The handle on network `index`, already made (a restarted service's adopted sandbox).
    public func named(_ index: Int, _ policy: EgressPolicy) -> SandboxNetwork {
        let me = self
        return SandboxNetwork.named(index: index, policy: policy, runtimeBase: runtimeBase) { me.release(index) }
    }

    /// Replaces network `index`'s policy while its sandbox runs. Blocking.
    public func update(_ index: Int, to policy: EgressPolicy) throws(NetworkError) {
        _ = try ask(["net-update", String(index), policy.file(hostAddresses: [])])
    }

    /// Gives network `index`'s name back (its namespace goes when its VMM has ended too). Blocking.
    public func release(_ index: Int) {
        _ = try? ask(["net-release", String(index)])
    }

    private func ask(_ fields: [String]) throws(NetworkError) -> String {
        let answer: String
        do { answer = try launcher.request(fields) } catch { throw .setup(error.description) }
        // The launcher answers with NetworkError's text: keep a refused policy a policy error.
        let refused = NetworkError.policy("").description
        if answer.hasPrefix(refused) { throw .policy(String(answer.dropFirst(refused.count))) }
        guard answer.hasPrefix("ok") else { throw .setup(answer) }
        return String(answer.dropFirst(3))
    }

    /// The networks this launcher made, by index: it holds their egress helpers (domain rules),
    /// which live until the network is given back.
    static let made = Mutex<[Int: SandboxNetwork]>([:])

    /// The launcher's side: answers one request (`VMMLauncher.serve(other:)`).
    public static func answer(_ fields: [String], runtimeBase: String = Sandbox.defaultRuntimeDirectory) -> String {
        func index(_ text: String) -> Int? {
            guard let i = Int(text), i >= 0, i < 1 << (30 - SandboxNetwork.pool.prefix) else { return nil }
            return i
        }
        // Host addresses come from the launcher's own view of the host, never from the request.
        func policy(_ text: String) -> EgressPolicy? { EgressPolicy.parseFile(text).flatMap { $0.hostAddresses.isEmpty ? $0.policy : nil } }
        do throws(NetworkError) {
            switch (fields.first, fields.count) {
            case ("net-create", 2):
                guard let policy = policy(fields[1]) else { return "malformed policy" }
                let network = try SandboxNetwork.create(policy: policy, runtimeBase: runtimeBase, adoptable: true)
                made.withLock { $0[network.index] = network }
                return "ok \(network.index)"
            case ("net-update", 3):
                guard let i = index(fields[1]), let policy = policy(fields[2]) else { return "malformed request" }
                // The helper first: it refuses domain rules for a network made without them, before
                // the nftables rules would send 80 and 443 to a proxy that is not there. A network
                // this launcher did not make (a restarted service's adopted sandbox): by its socket.
                if let network = made.withLock({ $0[i] }) { try network.updatePolicy(policy) } else {
                    try SandboxNetwork.updateHelper(index: i, runtimeBase: runtimeBase, policy)
                }
                try SandboxNetwork.replacePolicy(index: i, runtimeBase: runtimeBase, policy)
                return "ok"
            case ("net-release", 2):
                guard let i = index(fields[1]) else { return "malformed request" }
                if let network = made.withLock({ $0.removeValue(forKey: i) }) { network.close() } else {
                    SandboxNetwork.release(index: i, runtimeBase: runtimeBase)
                }
                return "ok"
            default:
                return "unknown request"
            }
        } catch {
            return error.description
        }
    }
}
