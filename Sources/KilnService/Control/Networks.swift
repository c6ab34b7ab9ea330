import FoundationEssentials
import KilnNet
import Sandbox

// Sandbox networks in the service (docs/net.md, "Networks in the service"): E2B's
// `allow_internet_access` and `network` on create, `PUT /sandboxes/{id}/network` on a running
// one. A sandbox gets a network only when its create asks for one (either field); it then
// restores from a template made with a network device, in a namespace the launcher sets up.

/// E2B's `SandboxNetworkConfig` on create and `SandboxNetworkUpdateConfig` on update (the fields
/// Kiln serves; one it does not is refused by name rather than ignored).
struct NetworkRequest: Decodable, Sendable, Equatable {
    var allowOut: [String]?
    var denyOut: [String]?
    /// Update only: the update's own `allow_internet_access`.
    var allowInternetAccess: Bool?
    var unsupported: [String] = []

    enum CodingKeys: String, CodingKey {
        case allowOut, denyOut, rules, egressProxy, dnsServers, maskRequestHost, httpsPorts, allowPublicTraffic
        case allowInternetAccess = "allow_internet_access"
    }

    init(allowOut: [String]? = nil, denyOut: [String]? = nil, allowInternetAccess: Bool? = nil) {
        self.allowOut = allowOut; self.denyOut = denyOut; self.allowInternetAccess = allowInternetAccess
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        allowOut = try c.decodeIfPresent([String].self, forKey: .allowOut)
        denyOut = try c.decodeIfPresent([String].self, forKey: .denyOut)
        allowInternetAccess = try c.decodeIfPresent(Bool.self, forKey: .allowInternetAccess)
        // Present and not empty: asked for something Kiln does not do.
        for key in [CodingKeys.rules, .egressProxy, .dnsServers, .maskRequestHost, .httpsPorts] where c.contains(key) {
            if (try? c.decodeNil(forKey: key)) == true { continue }
            if let list = try? c.decode([String].self, forKey: key), list.isEmpty { continue }
            if key == .dnsServers || key == .httpsPorts, let list = try? c.decode([Int].self, forKey: key), list.isEmpty { continue }
            unsupported.append(key.stringValue)
        }
        // Ports are public (PortProxy): a request for token-protected ones is refused, not ignored.
        if try c.decodeIfPresent(Bool.self, forKey: .allowPublicTraffic) == false { unsupported.append("allowPublicTraffic: false") }
    }

    /// The policy: E2B's semantics (allow wins over deny; everything else is open unless
    /// `allow_internet_access` is false, which is `denyOut: ["0.0.0.0/0"]`).
    func policy(internet: Bool?) throws(APIError) -> EgressPolicy {
        if let field = unsupported.first {
            throw APIError(400, "network.\(field) is not supported by this service (it serves allowOut and denyOut)")
        }
        var policy = EgressPolicy(internet: internet ?? true)
        for entry in allowOut ?? [] {
            switch AllowEntry(entry) {
            case .range(let r): policy.allow.append(r)
            case .domain(let d): policy.domains.append(d)
            case nil: throw APIError(400, "network.allowOut: '\(entry)' is not an IPv4 address, CIDR (A.B.C.D[/N]) or domain (NAME, *.NAME)")
            }
        }
        for entry in denyOut ?? [] {
            guard let r = IPv4Range(entry) else {
                throw APIError(400, "network.denyOut: '\(entry)' is not an IPv4 address or CIDR (A.B.C.D[/N]); deny rules take no domains")
            }
            policy.deny.append(r)
        }
        return policy
    }
}

/// What a sandbox's record keeps of its network: what was asked (for the sandbox's detail, and
/// to set the network up again at resume) and the launcher's pool index while it runs.
struct NetworkRecord: Codable, Sendable, Equatable {
    var allowInternetAccess: Bool?
    var allowOut: [String]
    var denyOut: [String]
    var index: Int?

    init(allowInternetAccess: Bool?, policy: EgressPolicy, index: Int?) {
        self.allowInternetAccess = allowInternetAccess
        allowOut = policy.allow.map(\.description) + policy.domains.map(\.description)
        denyOut = policy.deny.map(\.description)
        self.index = index
    }

    /// Read back as the request that made it (entries were checked then; none is dropped).
    var policy: EgressPolicy {
        (try? NetworkRequest(allowOut: allowOut, denyOut: denyOut).policy(internet: allowInternetAccess)) ?? EgressPolicy(internet: false)
    }
}

/// E2B's `SandboxNetworkConfig` in a sandbox's detail.
struct NetworkDescription: Encodable, Sendable { var allowOut: [String]; var denyOut: [String] }

extension NewSandboxRequest {
    /// The egress policy the create asks for; nil: no network (neither field given).
    func egressPolicy() throws(APIError) -> EgressPolicy? {
        guard allowInternetAccess != nil || network != nil else { return nil }
        return try (network ?? NetworkRequest()).policy(internet: allowInternetAccess)
    }
}

extension SandboxManager {
    /// A network for a sandbox about to start. Blocking work on `blocking` (the launcher runs `ip` and `nft`).
    func makeNetwork(_ policy: EgressPolicy) async throws(APIError) -> SandboxNetwork {
        guard let networks = settings.networks else {
            throw APIError(400, "this service gives sandboxes no network (it runs without root, or its launcher cannot make namespaces)")
        }
        do { return try await blocking.run { try networks.create(policy) } } catch {
            metrics.count(error: "network")
            throw APIError(500, "cannot set up the sandbox's network: \(error)")
        }
    }

    /// Gives a stopped sandbox's network back to the launcher.
    func releaseNetwork(_ e: Entry) async {
        guard let index = e.record.network?.index, let networks = settings.networks else { return }
        e.record.network?.index = nil
        _ = try? await blocking.run { networks.release(index) }
    }

    /// E2B's `PUT /sandboxes/{id}/network`: the sandbox's rules become the update's (a field it
    /// omits is cleared), at once for a running sandbox, at resume for a paused one.
    func updateNetwork(tenant: Tenant, id: String, _ update: NetworkRequest) async throws(APIError) {
        let e = try entry(tenant, id)
        guard var network = e.record.network else {
            throw APIError(400, "sandbox \(id) was created without a network (create it with allow_internet_access or network)")
        }
        guard !e.busy else { throw APIError(409, "sandbox \(id) is being paused or resumed") }
        let policy = try update.policy(internet: update.allowInternetAccess)
        if e.record.state == .running, let index = network.index, let networks = settings.networks {
            do { try await blocking.run { try networks.update(index, to: policy) } } catch {
                // A policy the sandbox's network cannot take (domain rules added to one made without) is the request's fault.
                if case .policy = error as? NetworkError { throw APIError(400, "sandbox \(id): \(error)") }
                throw APIError(500, "cannot change the network of sandbox \(id): \(error)")
            }
        }
        network = NetworkRecord(allowInternetAccess: update.allowInternetAccess, policy: policy, index: network.index)
        e.record.network = network
        save(e.record)
        logger.info("sandbox \(id): network policy changed (allowOut \(network.allowOut), denyOut \(network.denyOut), internet \(policy.internet))")
    }
}
