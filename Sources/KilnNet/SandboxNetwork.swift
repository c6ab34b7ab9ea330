import CLinux
import CSandbox
import Glibc
import LinuxSys
import Synchronization

/// One sandbox's network (docs/net.md, "Egress"): a network namespace of its own holding the
/// guest's TAP and one end of a veth pair whose other end is on the host, NAT and the egress
/// policy in that namespace's nftables, an address pair from Kiln's pool on the veth.
///
/// Lifetime: the namespace is named (bind-mounted at `namespacePath`) only until the VMM has
/// opened the TAP (`detachName()`); from then on the open TAP is what keeps it, so when the VMM
/// ends, however it ends, the kernel removes the namespace, the veth pair, the TAP and the
/// namespace's rules. A name left by a Kiln killed before detaching is swept by `sweep()` (the
/// creator's pid is recorded beside it), as is the host's shared NAT table once no sandbox uses it.
public final class SandboxNetwork: Sendable {
    /// The guest side, the same in every sandbox (each has a namespace of its own): templates
    /// carry it in their kernel command line, so a restored guest needs no configuration.
    public static let guestAddress: UInt32 = 0x647F_FF02 // 100.127.255.2
    public static let gatewayAddress: UInt32 = 0x647F_FF01 // 100.127.255.1
    public static let guestPrefix = 30
    public static let tapName = "kiln-tap"
    /// The gateway's MAC, also the same everywhere: a restored guest's neighbour cache (saved in
    /// the template, pointing at the template's TAP) stays right, so its first packet goes out.
    public static let gatewayMAC = "02:6b:69:6c:6e:01"
    /// The nftables table in each namespace, and the host's shared one (family ip).
    public static let tableName = "kiln"
    /// Host-side veth names are `kiln-h<index>`; `sweep` and the host's NAT rule match the prefix.
    public static let hostVethPrefix = "kiln-h"

    /// The guest's `ip=` kernel parameter (CONFIG_IP_PNP): its address, the gateway, no DHCP.
    public static var kernelParameter: String {
        "ip=\(IPv4Range.format(guestAddress))::\(IPv4Range.format(gatewayAddress)):\(IPv4Range.format(IPv4Range.mask(guestPrefix)))::eth0:off"
    }
    /// What the guest's /etc/resolv.conf says: DNS goes to the gateway, which forwards it.
    public static let resolvConf = "nameserver \(IPv4Range.format(gatewayAddress))\n"

    /// Kiln's address pool: one /30 per sandbox (host end .1, namespace end .2 of each).
    /// KILN_NET_POOL overrides it when 10.200.0.0/16 is in use on a host.
    public static var pool: IPv4Range {
        if let p = getenv("KILN_NET_POOL"), let r = IPv4Range(String(cString: p)), r.prefix <= 30 { return r }
        return IPv4Range("10.200.0.0/16")!
    }

    public let index: Int
    public let policy: EgressPolicy
    /// The namespace's bind mount, for the VMM to join (nil once detached).
    public let namespacePath: String
    public let hostAddress: UInt32
    public let namespaceAddress: UInt32
    /// Wall-clock seconds `create` took (namespace, veth, TAP, addresses, nftables).
    public let setupSeconds: Double
    private let detached = Mutex(false)
    private let base: String
    /// Set for a network another process made and names (`named`): its name stays for live
    /// policy changes, and `close()` hands it back through this instead of unmounting it here.
    private let giveBack: (@Sendable () -> Void)?
    /// The egress helper (DNS answerer and Host/SNI proxy), when the policy has domain rules.
    let helper: EgressControl?
    /// What the helper is told the host's addresses are (always denied, with the policy's).
    let hostAddresses: [UInt32]

    public var hostVeth: String { "\(Self.hostVethPrefix)\(index)" }
    public var namespaceVeth: String { "kiln-n\(index)" }

    init(index: Int, policy: EgressPolicy, base: String, hostAddress: UInt32, namespaceAddress: UInt32, setupSeconds: Double,
         helper: EgressControl? = nil, hostAddresses: [UInt32] = [], giveBack: (@Sendable () -> Void)? = nil) {
        self.index = index; self.policy = policy; self.base = base; self.helper = helper; self.hostAddresses = hostAddresses
        self.giveBack = giveBack
        self.namespacePath = Self.namespaceDirectory(base) + "/kiln-\(index)"
        self.hostAddress = hostAddress; self.namespaceAddress = namespaceAddress; self.setupSeconds = setupSeconds
    }

    static func namespaceDirectory(_ base: String) -> String { base + "/netns" }
    /// The egress helper's `--control` socket of network `index` (root only, 0600).
    static func helperControlPath(_ base: String, index: Int) -> String { namespaceDirectory(base) + "/kiln-\(index).egress" }

    /// One lock for the whole host, not one per runtime directory: the pool's interface names
    /// and the host's NAT table are the host's, and two Kiln processes with different runtime
    /// directories would otherwise race (a sweep that found no `kiln-h*` interface deleting the
    /// table under a sandbox that had just been created and found it there).
    static let hostLockPath: String = access("/run", W_OK) == 0 ? "/run/kiln-net.lock" : "/tmp/kiln-net.lock"

    /// Sets up a sandbox's network. Blocking (it runs `ip` and `nft`, tens of milliseconds):
    /// call it from a thread of its own, not a Swift task. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
    /// `runtimeBase` holds the namespace names and the lock (Sandbox.defaultRuntimeDirectory).
    /// `resolver` is the upstream DNS server (default: `Resolver.upstream()`, the host's, or
    /// `$KILN_NET_RESOLVER`). A policy with domain rules also starts the sandbox's egress helper;
    /// `adoptable` gives that helper a control socket under `runtimeBase` too, so that a process
    /// that did not make the network can change its rules (`updateHelper`: the service's launcher,
    /// whose sandboxes a restarted service adopts).
    public static func create(policy: EgressPolicy, runtimeBase: String, resolver: UInt32? = nil,
                              adoptable: Bool = false) throws(NetworkError) -> SandboxNetwork {
        let start = now()
        let dir = namespaceDirectory(runtimeBase)
        _ = mkdir(runtimeBase, 0o755)
        _ = mkdir(dir, 0o755)
        let lock = try Lock(Self.hostLockPath)
        defer { lock.release() }
        sweepLocked(dir)

        let pool = Self.pool
        let slots = 1 << (30 - pool.prefix)
        guard let index = (0..<slots).first(where: { i in
            if_nametoindex("\(hostVethPrefix)\(i)") == 0 && access("\(dir)/kiln-\(i)", F_OK) != 0
        }) else { throw .setup("the address pool \(pool) is used up (\(slots) sandboxes)") }
        let hostAddress = pool.base + UInt32(index * 4 + 1), namespaceAddress = hostAddress + 1
        let clash = Routes.read().first { r in !r.device.hasPrefix(hostVethPrefix) && r.range.prefix > 0 && r.range.overlaps(IPv4Range(base: hostAddress, prefix: 30)) }
        if let clash {
            throw .setup("Kiln's address pool \(pool) overlaps the host's route to \(clash.range) on \(clash.device): set KILN_NET_POOL to a free range")
        }
        let network = SandboxNetwork(index: index, policy: policy, base: runtimeBase, hostAddress: hostAddress,
                                     namespaceAddress: namespaceAddress, setupSeconds: 0)
        let hosts = HostAddresses.ipv4()
        let helper: EgressControl?
        do throws(NetworkError) {
            helper = try network.build(hostAddresses: hosts, resolver: resolver ?? Resolver.upstream(), adoptable: adoptable)
        } catch {
            network.close()
            throw error
        }
        return SandboxNetwork(index: index, policy: policy, base: runtimeBase, hostAddress: hostAddress,
                              namespaceAddress: namespaceAddress, setupSeconds: now() - start, helper: helper, hostAddresses: hosts)
    }

    private func build(hostAddresses: [UInt32], resolver: UInt32?, adoptable: Bool) throws(NetworkError) -> EgressControl? {
        let path = namespacePath, record = path + ".owner"
        guard Files.write(record, "\(getpid())\n") else { throw .setup("cannot write \(record): \(String(cString: strerror(errno)))") }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        guard fd >= 0 else { throw .setup("cannot create \(path): \(String(cString: strerror(errno)))") }
        Glibc.close(fd)

        let hostVeth = self.hostVeth, nsVeth = self.namespaceVeth, pid = getpid()
        let nsAddress = IPv4Range.format(namespaceAddress), host = IPv4Range.format(hostAddress)
        let gateway = Self.gatewayAddress
        let rules = policy.ruleset(tap: Self.tapName, uplink: nsVeth, gateway: gateway, resolver: resolver,
                                   hostAddresses: hostAddresses)
        let batch = """
            link set lo up
            link add \(nsVeth) type veth peer name \(hostVeth) netns \(pid)
            addr add \(nsAddress)/30 dev \(nsVeth)
            link set \(nsVeth) up
            tuntap add dev \(Self.tapName) mode tap
            link set \(Self.tapName) address \(Self.gatewayMAC)
            addr add \(IPv4Range.format(gateway))/\(Self.guestPrefix) dev \(Self.tapName)
            link set \(Self.tapName) up
            route add default via \(host)

            """
        let scratch = path + ".setup"
        // A new thread for the namespace: a namespace is per thread, and this one ends with it.
        let result = Outcome()
        let helperPath = policy.answersNames ? EgressHelper.locate() : nil
        if policy.answersNames && helperPath == nil {
            throw .setup("domain rules need \(EgressHelper.executableName) beside this program (or $KILN_EGRESS)")
        }
        // The helper's control socket is made here, in Kiln's own namespace: a socket holds the
        // namespace it was made in, and this end lives as long as the SandboxNetwork.
        var pair: [Int32] = [-1, -1]
        if helperPath != nil {
            guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                throw .setup("socketpair: \(String(cString: strerror(errno)))")
            }
        }
        let control = pair, controlPath = adoptable ? Self.helperControlPath(base, index: index) : nil
        let thread: LinuxSys.Thread
        do {
            thread = try LinuxSys.Thread.spawn(name: "kiln-netns") {
                do throws(NetworkError) {
                    guard kiln_unshare(Int32(KILN_CLONE_NEWNET)) == 0 else { throw .setup("unshare(CLONE_NEWNET): \(String(cString: strerror(errno)))") }
                    guard kiln_mount("/proc/thread-self/ns/net", path, nil, UInt(KILN_MS_BIND), nil) == 0 else {
                        throw .setup("cannot bind the namespace at \(path): \(String(cString: strerror(errno)))")
                    }
                    // IPv6 off: the guest gets IPv4 only, and no router advertisement reaches anything.
                    // (A host without IPv6 has no such files; then there is nothing to turn off.)
                    _ = Files.write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
                    _ = Files.write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                    guard Files.write("/proc/sys/net/ipv4/ip_forward", "1") else {
                        throw .setup("cannot set net.ipv4.ip_forward in the namespace: \(String(cString: strerror(errno)))")
                    }
                    try Self.run(["ip", "-batch"], input: batch, scratch: scratch + ".ip")
                    try Self.run(["nft", "-f"], input: rules, scratch: scratch + ".nft")
                    // Started from this thread, the helper lives in the namespace.
                    if let helperPath {
                        let started = try EgressControl.start(helperPath, resolver: resolver, pair: control,
                                                              controlPath: controlPath)
                        result.helper.withLock { $0 = started }
                    }
                } catch {
                    result.error.withLock { $0 = error }
                }
            }
        } catch { throw .setup("cannot start a thread: \(error)") }
        thread.join()
        let helper = result.helper.withLock { $0 }
        if helper == nil { for fd in control where fd >= 0 { Glibc.close(fd) } }
        // From this thread too, so that it is not in the sandbox's namespace.
        helper?.startReaper()
        do throws(NetworkError) {
            if let error = result.error.withLock({ $0 }) { throw error }
            try helper?.begin(policy.file(hostAddresses: hostAddresses))
        } catch {
            helper?.stop()
            throw error
        }

        // The host's end: its address, forwarding on it only, and the shared NAT out of the host.
        try Self.run(["ip", "-batch"], input: "addr add \(host)/30 dev \(hostVeth)\nlink set \(hostVeth) up\n", scratch: scratch + ".ip")
        guard Files.write("/proc/sys/net/ipv4/conf/\(hostVeth)/forwarding", "1") else {
            throw .setup("cannot enable forwarding on \(hostVeth): \(String(cString: strerror(errno)))")
        }
        try Self.ensureHostTable(scratch: scratch + ".nft")
        return helper
    }

    /// The host's table: masquerade what the pool sends out of any interface but Kiln's own, and
    /// no forwarding between two sandboxes. Shared by every sandbox; the sweep removes it once
    /// no `kiln-h*` interface is left.
    static func ensureHostTable(scratch: String) throws(NetworkError) {
        if hostTableExists() { return }
        let rules = """
            table ip \(tableName) {
              chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr \(pool) oifname != "\(hostVethPrefix)*" masquerade
              }
              chain forward {
                type filter hook forward priority filter; policy accept;
                iifname "\(hostVethPrefix)*" oifname "\(hostVethPrefix)*" drop
              }
            }

            """
        try run(["nft", "-f"], input: rules, scratch: scratch)
    }

    /// Whether the host's table is there (`nft list tables`: a missing table is no error on stderr).
    static func hostTableExists() -> Bool {
        guard let r = try? runProgram(["nft", "list", "tables"]), r.status == 0 else { return false }
        return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").contains { $0 == "table ip \(tableName)" }
    }

    /// A handle on network `index` that another process made with `create` and keeps named under
    /// `runtimeBase` (`kiln serve`'s launcher, which may run `ip` and `nft` where the confined
    /// service may not): restores join it by its name, which stays until `close()` calls
    /// `giveBack` (the launcher's `release`), so that its policy can change while it runs.
    public static func named(index: Int, policy: EgressPolicy, runtimeBase: String,
                             giveBack: @escaping @Sendable () -> Void) -> SandboxNetwork {
        let host = pool.base + UInt32(index * 4 + 1)
        return SandboxNetwork(index: index, policy: policy, base: runtimeBase, hostAddress: host, namespaceAddress: host + 1,
                              setupSeconds: 0, giveBack: giveBack)
    }

    /// Replaces the egress policy of named network `index` under `runtimeBase` while its sandbox
    /// runs (E2B's `PUT /sandboxes/{id}/network`): one `nft -f` in its namespace deletes and
    /// rebuilds the table in one transaction, so no packet sees a half-made ruleset, and
    /// connections already allowed carry on (conntrack keeps them; the new rules judge new ones).
    /// Blocking, root.
    public static func replacePolicy(index: Int, runtimeBase: String, _ policy: EgressPolicy) throws(NetworkError) {
        let path = namespaceDirectory(runtimeBase) + "/kiln-\(index)"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .setup("network \(index) has no namespace at \(path): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        let rules = "table inet \(tableName) {}\ndelete table inet \(tableName)\n"
            + policy.ruleset(tap: tapName, uplink: "kiln-n\(index)", gateway: gatewayAddress, resolver: Resolver.upstream(),
                             hostAddresses: HostAddresses.ipv4())
        let scratch = path + ".update.nft"
        let result = Outcome()
        do {
            let thread = try LinuxSys.Thread.spawn(name: "kiln-netns") {
                do throws(NetworkError) {
                    guard kiln_setns_net(fd) == 0 else { throw .setup("cannot enter the namespace of network \(index): \(String(cString: strerror(errno)))") }
                    try Self.run(["nft", "-f"], input: rules, scratch: scratch)
                } catch {
                    result.error.withLock { $0 = error }
                }
            }
            thread.join()
        } catch { throw .setup("cannot start a thread: \(error)") }
        if let error = result.error.withLock({ $0 }) { throw error }
    }

    /// Unmounts and removes network `index`'s name under `runtimeBase` (the launcher's side of
    /// `named`'s `giveBack`): once its VMM has ended too, the kernel frees the namespace.
    public static func release(index: Int, runtimeBase: String) {
        let path = namespaceDirectory(runtimeBase) + "/kiln-\(index)"
        _ = kiln_umount2(path, Int32(KILN_MNT_DETACH))
        unlink(path)
        unlink(path + ".owner")
        unlink(helperControlPath(runtimeBase, index: index))
    }

    /// Replaces the policy of network `index`'s egress helper through its control socket, for a
    /// process that did not make the network and holds no handle on its helper (a restarted
    /// service's launcher, adopting the sandboxes the old one made). The same contract as
    /// `updatePolicy`: a network made without domain rules has no helper, and giving it domain
    /// rules is refused. Blocking (at most 5 s), root.
    public static func updateHelper(index: Int, runtimeBase: String, _ policy: EgressPolicy) throws(NetworkError) {
        let path = helperControlPath(runtimeBase, index: index)
        guard access(path, F_OK) == 0 else {
            if policy.answersNames { throw .policy(Self.noHelper) }
            return
        }
        let socket: Int32
        do { socket = try UnixSocket.connectMessages(path: path).release() } catch {
            throw .setup("the sandbox's \(EgressHelper.executableName) is gone (\(error))")
        }
        try EgressControl(pid: nil, socket: socket).update(policy.file(hostAddresses: HostAddresses.ipv4()))
    }

    static let noHelper = "this sandbox was created without domain rules: they cannot be added while it runs"

    /// Makes `pid` (the sandbox's VMM) the owner of this network's name: `sweep` removes a name
    /// whose owner is gone, so the name of a sandbox that outlives its maker (a detached VMM that
    /// a restarted service adopts) stays exactly as long as the VMM runs.
    public func recordOwner(_ pid: Int32) {
        _ = Files.write(namespacePath + ".owner", "\(pid)\n")
    }

    /// Removes the namespace's name once the VMM has opened the TAP (the TAP keeps it from then
    /// on). No exec and no new socket: `kiln run`'s seccomp-confined supervisor may call it.
    /// A `named` network keeps its name (the service changes its policy through it).
    public func detachName() {
        guard giveBack == nil else { return }
        let first = detached.withLock { d in defer { d = true }; return !d }
        guard first else { return }
        _ = kiln_umount2(namespacePath, Int32(KILN_MNT_DETACH))
        unlink(namespacePath)
        unlink(namespacePath + ".owner")
    }

    /// Gives the network up before or instead of a VMM: the namespace goes as soon as nothing
    /// holds it (a VMM that opened the TAP keeps it until it ends). Ends the egress helper, which
    /// would otherwise wait for a VMM (or for this process to end).
    /// A `named` network is handed back instead (its maker ends its helper).
    public func close() {
        if let giveBack {
            let first = detached.withLock { d in defer { d = true }; return !d }
            if first { giveBack() }
            return
        }
        detachName()
        if let helper {
            helper.stop()
            unlink(Self.helperControlPath(base, index: index))
        }
    }

    /// Changes what a running sandbox's egress helper allows, at once and without a restart
    /// (the service's `PUT /sandboxes/{id}/network`): `policy` replaces the helper's whole policy,
    /// its domain rules as well as the CIDRs and `internet` it uses to decide where a proxied
    /// connection or a resolved answer may go. Returns once the helper has applied it (so that a
    /// request answered after this sees the new rules). Blocking (a round trip on the helper's
    /// control socket, at most 5 s); call it off Swift's cooperative threads.
    ///
    /// The nftables sets of the namespace (the CIDRs for every port) are not changed here: the
    /// caller updates them too. A network created without domain rules has no helper (its DNS
    /// goes to the host's resolver through nftables): giving it domain rules is refused.
    public func updatePolicy(_ policy: EgressPolicy) throws(NetworkError) {
        guard let helper else {
            if policy.answersNames { throw .policy(Self.noHelper) }
            return
        }
        try helper.update(policy.file(hostAddresses: hostAddresses))
    }

    /// The egress helper's process id (nil without domain rules); for tests and diagnostics.
    public var helperPID: pid_t? { helper?.pid }

    /// Removes what Kiln processes killed mid-setup left: names whose creator is gone, and the
    /// host's table when no sandbox network is left. Blocking (runs `nft`); needs root.
    public static func sweep(runtimeBase: String) {
        let dir = namespaceDirectory(runtimeBase)
        guard access(dir, F_OK) == 0, let lock = try? Lock(hostLockPath) else { return }
        defer { lock.release() }
        sweepLocked(dir)
        // The kernel frees a namespace (and its veth) in the background: a moment after the VMM ends.
        if !Routes.interfaces().contains(where: { $0.hasPrefix(hostVethPrefix) }) && hostTableExists() {
            _ = try? runProgram(["nft", "delete", "table", "ip", tableName])
        }
    }

    static func sweepLocked(_ dir: String) {
        for name in Files.list(dir) where name.hasPrefix("kiln-") && !name.contains(".") {
            let path = dir + "/" + name
            let owner = Files.read(path + ".owner").flatMap { Int32($0.trimmed()) } ?? 0
            if owner > 0 && (kill(owner, 0) == 0 || errno == EPERM) { continue }
            _ = kiln_umount2(path, Int32(KILN_MNT_DETACH))
            unlink(path)
            unlink(path + ".owner")
        }
        // A helper's control socket outlives it (it cannot remove a file once confined): gone
        // once nothing listens on it any more (refused; a full backlog is a live helper).
        for name in Files.list(dir) where name.hasSuffix(".egress") {
            do throws(Errno) { _ = try UnixSocket.connectMessages(path: dir + "/" + name, nonBlocking: true) } catch {
                if error.code == ECONNREFUSED { unlink(dir + "/" + name) }
            }
        }
        for name in Files.list(dir) where name.hasSuffix(".setup.ip") || name.hasSuffix(".setup.nft") {
            let owner = Files.read(dir + "/" + String(name.prefix { $0 != "." }) + ".owner")
            if owner == nil { unlink(dir + "/" + name) }
        }
    }

    /// Runs `argv` + a file holding `input` (ip -batch, nft -f read files, and the
    /// library's runProgram gives no stdin).
    static func run(_ argv: [String], input: String, scratch: String) throws(NetworkError) {
        guard Files.write(scratch, input) else { throw .setup("cannot write \(scratch)") }
        defer { unlink(scratch) }
        let status: Int32
        do { status = try runProgram(argv + [scratch]).status } catch {
            throw .setup("cannot run \(argv[0]) (is \(argv[0] == "nft" ? "nftables" : "iproute2") installed?): \(error)")
        }
        guard status == 0 else { throw .setup("\(argv.joined(separator: " ")) exited with \(status) on:\n\(input)") }
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}

/// An exclusive flock on a file, for the pool and the sweep.
struct Lock {
    let fd: Int32
    init(_ path: String) throws(NetworkError) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .setup("cannot open \(path): \(String(cString: strerror(errno)))") }
        while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
    }
    func release() { Glibc.close(fd) }
}

/// The setup thread's failure, read after the join.
final class Outcome: Sendable {
    let error = Mutex<NetworkError?>(nil)
    let helper = Mutex<EgressControl?>(nil)
}

/// The creator's end of a running egress helper: its pid and its control socket (or, without a
/// pid, a connection to its `--control` socket from another process).
final class EgressControl: Sendable {
    let pid: pid_t?
    let socket: Int32
    /// One update at a time: each waits for its own answer.
    private let lock = Mutex(())
    /// Set (under the lock) once the helper has ended, before it is reaped: no stray kill after.
    private let ended = Mutex(false)

    init(pid: pid_t?, socket: Int32) { self.pid = pid; self.socket = socket }
    deinit { Glibc.close(socket) }

    /// Starts `kiln-egress` (from the calling thread, so in its network namespace) with one end
    /// of a SOCK_SEQPACKET pair at fd 3; a thread of this process reaps it when it ends.
    static func start(_ path: String, resolver: UInt32?, pair: [Int32], controlPath: String?) throws(NetworkError) -> EgressControl {
        var argv = [path, "--tap", SandboxNetwork.tapName, "--creator", "\(getpid())"]
        if let controlPath { argv += ["--control", controlPath] }
        if let resolver { argv += ["--resolver", IPv4Range.format(resolver)] }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pair[1], 3)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { free(env[0]) }
        var pid: pid_t = 0
        let rc = cArgs.withUnsafeBufferPointer { args in
            posix_spawn(&pid, path, &actions, nil, UnsafeMutablePointer(mutating: args.baseAddress!), &env)
        }
        // On failure the caller closes both ends.
        guard rc == 0 else { throw .setup("cannot start \(path): \(String(cString: strerror(rc)))") }
        Glibc.close(pair[1])
        return EgressControl(pid: pid, socket: pair[0])
    }

    /// Reaps the helper when it ends, so that a long-running creator (the service) keeps no zombies.
    func startReaper() {
        guard let pid else { return }
        _ = try? LinuxSys.Thread.spawn(name: "kiln-egress-wait") { self.reap(pid) }
    }

    private func reap(_ pid: pid_t) {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        ended.withLock { done in
            done = true
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// Hands the helper its first policy and waits until it has bound its sockets.
    func begin(_ policy: String) throws(NetworkError) {
        guard exchange(policy) == "ready" else { throw .setup("\(EgressHelper.executableName) did not start (see its error above)") }
    }

    func update(_ policy: String) throws(NetworkError) {
        guard let answer = exchange(policy) else { throw .setup("the sandbox's \(EgressHelper.executableName) is gone") }
        guard answer == "ok" else { throw .policy("the egress helper refused the policy") }
    }

    private func exchange(_ message: String) -> String? {
        lock.withLock { _ -> String? in
            var t = timeval(tv_sec: 5, tv_usec: 0)
            _ = setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
            let bytes = Array(message.utf8)
            guard bytes.withUnsafeBytes({ Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else { return nil }
            var buffer = [UInt8](repeating: 0, count: 64)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
                if n < 0 && errno == EINTR { continue }
                return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
            }
        }
    }

    func stop() {
        guard let pid else { return }
        ended.withLock { if !$0 { kill(pid, SIGKILL) } }
    }
}
