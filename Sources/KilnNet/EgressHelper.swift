import CLinux
import CSandbox
import Glibc
import LinuxSys
import Seccomp
import Synchronization

/// The sandbox's egress helper (docs/net.md, "Domains"): the process `kiln-egress`, started by
/// `SandboxNetwork.create` inside the sandbox's namespace when its policy has domain rules. It
/// answers the guest's DNS on the gateway (only allowed names are forwarded to the upstream
/// resolver; answers pointing at denied addresses are dropped) and proxies the guest's TCP to
/// ports 80 and 443 (redirected to it by the namespace's nftables): it reads the Host header or
/// the TLS SNI, resolves the name itself and dials only the name's real, permitted addresses.
///
/// Control: fd 3 is a SOCK_SEQPACKET socket to its creator. Each message is a policy file
/// (`EgressPolicy.file(hostAddresses:)`); the helper applies it and answers `ok` (or `bad`). The
/// first message is the initial policy; after it the helper binds its sockets, gives up root
/// and answers `ready`. EOF on fd 3 only ends updates from the creator (a detached sandbox
/// outlives it): with `--control PATH` the helper also listens, bound as root with mode 0600
/// before it gives root up, on a SOCK_SEQPACKET socket at PATH that speaks the same updates,
/// one client at a time, so that a restarted service's launcher reaches the helpers of the
/// sandboxes it adopts (`SandboxNetwork.updateHelper`).
/// Lifetime: the helper ends when the sandbox's TAP loses its carrier after having had it (the
/// VMM closed it: it ended), or when the creator dies before any VMM opened the TAP.
public enum EgressHelper {
    public static let executableName = "kiln-egress"
    /// Where nftables redirects the guest's TCP to ports 80 and 443 (on the gateway's address).
    public static let proxyPort: UInt16 = 15001
    /// At most this many proxied connections and DNS exchanges at once; more are refused.
    static let maxConnections = 256
    static let nobody: uid_t = 65534

    /// `$KILN_EGRESS`, else `kiln-egress` beside this executable (kiln, kiln-vmm's neighbour, or
    /// a test runner in the same build directory).
    public static func locate() -> String? {
        if let p = getenv("KILN_EGRESS"), p.pointee != 0 { return String(cString: p) }
        return executableBesideSelf(executableName)
    }

    /// The policy the helper enforces now, replaced by control messages.
    final class State: Sendable {
        let current: Mutex<(policy: EgressPolicy, hosts: [UInt32])>
        let resolver: UInt32?
        /// The resolver's port (53; another for tests).
        let resolverPort: UInt16
        let cache: DNSCache
        let active = Atomic<Int>(0)
        init(_ policy: EgressPolicy, hosts: [UInt32], resolver: UInt32?, resolverPort: UInt16 = 53, cache: DNSCache = DNSCache()) {
            current = Mutex((policy, hosts)); self.resolver = resolver; self.resolverPort = resolverPort; self.cache = cache
        }

        /// Upstream's answer to `labels`/`type`: kept from an earlier question, or asked now (and kept).
        func ask(labels: [[UInt8]], type: UInt16) -> DNS.Response? {
            if let kept = cache.lookup(labels: labels, type: type) { return kept }
            guard let resolver, let response = EgressHelper.ask(resolver, port: resolverPort, labels: labels, type: type) else { return nil }
            cache.store(labels: labels, type: type, response)
            return response
        }
        var snapshot: (policy: EgressPolicy, hosts: [UInt32]) { current.withLock { $0 } }
    }

    /// `kiln-egress --tap NAME --creator PID [--resolver A.B.C.D] [--control PATH]`; returns only on failure.
    public static func main(_ arguments: [String]) -> Int32 {
        var tap = SandboxNetwork.tapName, creator: pid_t = 0, resolver: UInt32?, controlPath: String?
        var i = 0
        while i + 1 < arguments.count {
            switch arguments[i] {
            case "--tap": tap = arguments[i + 1]
            case "--creator": creator = pid_t(arguments[i + 1]) ?? 0
            case "--resolver": resolver = IPv4Range.parseAddress(arguments[i + 1])
            case "--control": controlPath = arguments[i + 1]
            default: return complain("unknown argument \(arguments[i])")
            }
            i += 2
        }
        let control: Int32 = 3
        guard let first = receive(control), let parsed = EgressPolicy.parseFile(String(decoding: first, as: UTF8.self)) else {
            return complain("no policy on the control socket")
        }
        let state = State(parsed.policy, hosts: parsed.hostAddresses, resolver: resolver)
        let gateway = SandboxNetwork.gatewayAddress
        guard let udp = Sockets.bound(Int32(SOCK_DGRAM.rawValue), gateway, 53),
              let tcpDNS = Sockets.bound(Int32(SOCK_STREAM.rawValue), gateway, 53),
              let proxy = Sockets.bound(Int32(SOCK_STREAM.rawValue), gateway, proxyPort) else {
            return complain("cannot bind on \(IPv4Range.format(gateway)): \(String(cString: strerror(errno)))")
        }
        var controlListener: Int32?
        if let controlPath {
            // A stale file of a helper that ended with its sandbox (this index is free again).
            unlink(controlPath)
            let mask = umask(0o177)
            defer { umask(mask) }
            do throws(Errno) { controlListener = try UnixSocket.listenMessages(path: controlPath, backlog: 4).release() } catch {
                return complain("cannot listen on \(controlPath): \(error)")
            }
        }
        // Nothing below needs root: the sockets are bound, dialling out needs no privilege.
        _ = kiln_set_rlimit(Int32(KILN_RLIMIT_CORE), 0)
        // A thread per connection and per question: past eight at once, an uncapped malloc opens
        // /sys/devices/system/cpu/online to count CPUs, which the filter below kills the process for.
        _ = kiln_malloc_arena_max(4)
        guard kiln_drop_bounding_set() == 0, kiln_set_ids(nobody, gid_t(nobody)) == 0, kiln_drop_capabilities() == 0,
              kiln_no_new_privs() == 0 else { return complain("cannot drop privileges: \(String(cString: strerror(errno)))") }
        // Security/seccomp/egress.policy: sockets, threads, memory; no files, no exec.
        do throws(SeccompError) { try SeccompFilters(mode: .kill).installOnAllThreads(.egress) } catch {
            return complain("cannot install its seccomp filter: \(error)")
        }
        _ = send(control, Array("ready".utf8))

        do {
            _ = try LinuxSys.Thread.spawn(name: "egress-control") { controlLoop(control, state) }
            if let controlListener {
                _ = try LinuxSys.Thread.spawn(name: "egress-ctl-listen") { controlClients(controlListener, state) }
            }
            _ = try LinuxSys.Thread.spawn(name: "egress-dns") { udpLoop(udp, state) }
            _ = try LinuxSys.Thread.spawn(name: "egress-dnstcp") { acceptLoop(tcpDNS, state) { tcpDNSConnection($0, state) } }
            _ = try LinuxSys.Thread.spawn(name: "egress-proxy") { acceptLoop(proxy, state) { proxyConnection($0, state) } }
        } catch { return complain("cannot start a thread: \(error)") }
        watch(tap: tap, creator: creator)
        return 0
    }

    static func complain(_ why: String) -> Int32 {
        let line = Array("kiln-egress: \(why)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        return 1
    }

    static func receive(_ fd: Int32) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            return n > 0 ? Array(buffer[0..<n]) : nil
        }
    }

    @discardableResult
    static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }

    static func controlLoop(_ fd: Int32, _ state: State) {
        while let message = receive(fd) {
            guard let parsed = EgressPolicy.parseFile(String(decoding: message, as: UTF8.self)) else {
                send(fd, Array("bad".utf8)); continue
            }
            state.current.withLock { $0 = (parsed.policy, parsed.hostAddresses) }
            send(fd, Array("ok".utf8))
        }
    }

    /// Serves the `--control` socket's clients one after the other (root on the host only: the
    /// socket is 0600 and outside the namespace's reach); one that sends nothing for 10 s is dropped.
    static func controlClients(_ listener: Int32, _ state: State) {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { if errno != EINTR { usleep(10_000) }; continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var t = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
            controlLoop(fd, state)
            close(fd)
        }
    }

    /// Ends the process once the TAP has had a carrier (a VMM opened it) and lost it (the VMM is
    /// gone), or when the creator is gone before any VMM opened it.
    static func watch(tap: String, creator: pid_t) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var seenUp = false
        while true {
            guard let up = Sockets.running(fd, tap) else { exit(0) }
            if up { seenUp = true } else if seenUp { exit(0) }
            if !seenUp && creator > 0 && kill(creator, 0) != 0 && errno == ESRCH { exit(0) }
            usleep(200_000)
        }
    }

    // MARK: DNS

    static func udpLoop(_ fd: Int32, _ state: State) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var from = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buffer.withUnsafeMutableBytes { b in
                withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, 0, $0, &length) } }
            }
            guard n > 0 else { continue }
            let query = Array(buffer[0..<n])
            guard state.active.add(1, ordering: .relaxed).newValue <= maxConnections else {
                state.active.subtract(1, ordering: .relaxed); continue
            }
            let peer = from
            let spawned = try? LinuxSys.Thread.spawn(name: "egress-query") {
                defer { state.active.subtract(1, ordering: .relaxed) }
                guard let reply = answer(query, state, udp: true) else { return }
                var to = peer
                _ = reply.withUnsafeBytes { r in
                    withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, r.baseAddress, r.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                }
            }
            if let spawned { pthread_detach(spawned.handle) } else { state.active.subtract(1, ordering: .relaxed) }
        }
    }

    static func tcpDNSConnection(_ fd: Int32, _ state: State) {
        Sockets.setTimeout(fd, seconds: 10)
        while let prefix = Sockets.readExactly(fd, 2) {
            guard let query = Sockets.readExactly(fd, Int(prefix[0]) << 8 | Int(prefix[1])),
                  let reply = answer(query, state, udp: false) else { return }
            guard Sockets.writeAll(fd, [UInt8(reply.count >> 8), UInt8(reply.count & 0xFF)] + reply) else { return }
        }
    }

    /// The answer to one guest query: NXDOMAIN for a name the policy does not allow (it is
    /// never sent upstream), REFUSED when every address of an allowed name is denied (DNS
    /// rebinding), else the upstream's answer without the records pointing at denied addresses.
    static func answer(_ bytes: [UInt8], _ state: State, udp: Bool) -> [UInt8]? {
        guard let query = DNS.parseQuery(bytes) else { return nil }
        let limit = udp ? query.udpLimit : 65535
        let (policy, hosts) = state.snapshot
        guard let name = query.name, query.qclass == DNS.classIN, policy.allowsName(name) else {
            return DNS.answer(query, rcode: DNS.nameError, answers: [], limit: limit)
        }
        guard let response = state.ask(labels: query.labels, type: query.type) else {
            return DNS.answer(query, rcode: DNS.serverFailure, answers: [], limit: limit)
        }
        let kept = response.answers.filter { r in r.address.map { policy.allowsAnswer($0, hostAddresses: hosts) } ?? true }
        let hadAddresses = response.answers.contains { $0.address != nil }
        if hadAddresses && !kept.contains(where: { $0.address != nil }) {
            return DNS.answer(query, rcode: DNS.refused, answers: [], limit: limit)
        }
        return DNS.answer(query, rcode: response.rcode, answers: kept, limit: limit)
    }

    /// One question to the upstream resolver: over UDP (two tries, two seconds each), and again
    /// over TCP when the UDP answer came truncated (TC), as RFC 7766 has a client do; a TCP try
    /// that fails leaves the truncated answer with the records it held. `port` is for tests.
    public static func ask(_ resolver: UInt32, port: UInt16 = 53, labels: [[UInt8]], type: UInt16) -> DNS.Response? {
        guard let udp = askUDP(resolver, port: port, labels: labels, type: type) else { return nil }
        guard udp.truncated else { return udp }
        return askTCP(resolver, port: port, labels: labels, type: type) ?? udp
    }

    static func askUDP(_ resolver: UInt32, port: UInt16, labels: [[UInt8]], type: UInt16) -> DNS.Response? {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        Sockets.setTimeout(fd, seconds: 2)
        // Connected: the kernel drops datagrams from anyone but the resolver.
        guard Sockets.connect(fd, resolver, port) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<2 {
            let id = UInt16.random(in: 0...UInt16.max)
            guard Sockets.writeAll(fd, DNS.query(id: id, labels: labels, type: type)) else { return nil }
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                if let r = DNS.parseResponse(Array(buffer[0..<n]), id: id, labels: labels, type: type) { return r }
            }
        }
        return nil
    }

    /// The question over TCP (a two-byte length before each message; one try, 2 s for each step).
    static func askTCP(_ resolver: UInt32, port: UInt16, labels: [[UInt8]], type: UInt16) -> DNS.Response? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        Sockets.setTimeout(fd, seconds: 2)
        guard Sockets.connect(fd, resolver, port) else { return nil }
        let id = UInt16.random(in: 0...UInt16.max)
        let query = DNS.query(id: id, labels: labels, type: type)
        guard Sockets.writeAll(fd, [UInt8(query.count >> 8), UInt8(query.count & 0xFF)] + query),
              let prefix = Sockets.readExactly(fd, 2),
              let message = Sockets.readExactly(fd, Int(prefix[0]) << 8 | Int(prefix[1])) else { return nil }
        return DNS.parseResponse(message, id: id, labels: labels, type: type)
    }

    /// The permitted A addresses of `name` (after CNAMEs, as the upstream resolved them).
    static func resolve(_ name: String, _ state: State, _ policy: EgressPolicy, _ hosts: [UInt32]) -> [UInt32] {
        guard let r = state.ask(labels: DNS.labels(name), type: DNS.typeA) else { return [] }
        return r.answers.compactMap(\.address).filter { policy.allowsAnswer($0, hostAddresses: hosts) }
    }

    // MARK: Proxy

    static func acceptLoop(_ listener: Int32, _ state: State, _ handle: @escaping @Sendable (Int32) -> Void) {
        while true {
            // accept4 is GNU-only: no exec happens in this process, close-on-exec is for form.
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { if errno != EINTR { usleep(10_000) }; continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            guard state.active.add(1, ordering: .relaxed).newValue <= maxConnections else {
                state.active.subtract(1, ordering: .relaxed); Sockets.reset(fd); continue
            }
            let spawned = try? LinuxSys.Thread.spawn(name: "egress-conn") {
                defer { state.active.subtract(1, ordering: .relaxed) }
                handle(fd)
            }
            // Detached: a finished connection's thread gives its stack back (none joins it).
            if let spawned { pthread_detach(spawned.handle) } else { state.active.subtract(1, ordering: .relaxed); Sockets.reset(fd) }
        }
    }

    /// Where one redirected connection may go (docs/net.md, "Domains"): its own destination when
    /// the address rules allow that address; else, when the Host/SNI names an allowed name, that
    /// name's own address (the original one if it is among them): never a denied one.
    public static func target(original: UInt32, peek: ProxyPeek, policy: EgressPolicy, hosts: [UInt32],
                              resolve: (String) -> [UInt32]) -> UInt32? {
        if policy.allowsAddress(original, hostAddresses: hosts) { return original }
        guard case .name(let name) = peek, policy.allowsName(name) else { return nil }
        let addresses = resolve(name).filter { policy.allowsAnswer($0, hostAddresses: hosts) }
        return addresses.contains(original) ? original : addresses.first
    }

    static func proxyConnection(_ client: Int32, _ state: State) {
        guard let (original, port) = Sockets.originalDestination(client), port == 80 || port == 443 else { return Sockets.reset(client) }
        Sockets.setTimeout(client, seconds: 10)
        var bytes: [UInt8] = [], peek = ProxyPeek.incomplete
        var chunk = [UInt8](repeating: 0, count: 4096)
        while peek == .incomplete {
            let n = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { peek = .none; break }
            bytes += chunk[0..<n]
            peek = port == 80 ? ProxyPeek.http(bytes) : ProxyPeek.tls(bytes)
        }
        let (policy, hosts) = state.snapshot
        guard let address = target(original: original, peek: peek, policy: policy, hosts: hosts, resolve: { resolve($0, state, policy, hosts) }) else {
            return Sockets.reset(client)
        }
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard upstream >= 0 else { return Sockets.reset(client) }
        Sockets.setTimeout(upstream, seconds: 10)
        guard Sockets.connect(upstream, address, port), Sockets.writeAll(upstream, bytes) else {
            close(upstream); return Sockets.reset(client)
        }
        Sockets.setTimeout(client, seconds: 0)
        Sockets.setTimeout(upstream, seconds: 0)
        // One thread a direction: neither can block the other (both may stream at once).
        let back = try? LinuxSys.Thread.spawn(name: "egress-back") { Sockets.copy(from: upstream, to: client) }
        Sockets.copy(from: client, to: upstream)
        back?.join()
        close(upstream)
        close(client)
    }
}

/// The helper's socket calls, each on IPv4.
enum Sockets {
    static func address(_ a: UInt32, _ port: UInt16) -> sockaddr_in {
        var s = sockaddr_in()
        s.sin_family = sa_family_t(AF_INET); s.sin_port = port.bigEndian; s.sin_addr.s_addr = a.bigEndian
        return s
    }

    static func bound(_ type: Int32, _ a: UInt32, _ port: UInt16) -> Int32? {
        let fd = socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = address(a, port)
        let ok = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
        guard ok, type != Int32(SOCK_STREAM.rawValue) || listen(fd, 128) == 0 else { close(fd); return nil }
        return fd
    }

    /// Blocking connect, bounded by the socket's send timeout (SO_SNDTIMEO applies to connect).
    static func connect(_ fd: Int32, _ a: UInt32, _ port: UInt16) -> Bool {
        var sa = address(a, port)
        while true {
            let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc == 0 { return true }
            if errno != EINTR { return false }
        }
    }

    static func setTimeout(_ fd: Int32, seconds: Int) {
        var t = timeval(tv_sec: seconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Closes with a reset, so that a refused guest connection fails at once.
    static func reset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    /// The destination a redirected connection had before nftables redirected it (SO_ORIGINAL_DST).
    static func originalDestination(_ fd: Int32) -> (UInt32, UInt16)? {
        var sa = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
        guard getsockopt(fd, Int32(IPPROTO_IP), 80 /* SO_ORIGINAL_DST */, &sa, &length) == 0 else { return nil }
        return (UInt32(bigEndian: sa.sin_addr.s_addr), UInt16(bigEndian: sa.sin_port))
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count), done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return out
    }

    /// Copies until end of stream, then passes the end on (a half-close, as TCP allows).
    static func copy(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0, writeAll(to, Array(buffer[0..<n])) else { break }
        }
        _ = shutdown(to, Int32(SHUT_WR))
        _ = shutdown(from, Int32(SHUT_RD))
    }

    /// Whether interface `name` has a carrier (IFF_RUNNING); nil when it does not exist.
    static func running(_ fd: Int32, _ name: String) -> Bool? {
        var request = ifreq()
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { raw in
            for (i, b) in name.utf8.prefix(15).enumerated() { raw[i] = b }
        }
        guard kiln_ioctl_ptr(fd, UInt(SIOCGIFFLAGS), &request) == 0 else { return nil }
        return Int32(request.ifr_ifru.ifru_flags) & 0x40 /* IFF_RUNNING */ != 0
    }
}
