import AgentProtocol
import Devices
import Glibc
import VMM

/// A host directory mounted in the sandbox over virtio-fs (`kiln run -v HOST:GUEST[:ro]`,
/// docs/volumes.md). Every sandbox carries `Configuration.shareSlots` virtio-fs devices (tags
/// `kiln0`...), unbound unless a volume is given, so that templates carry them too and a restored
/// sandbox gets its volumes by binding a slot; the agent then mounts each one.
public struct Volume: Sendable, Equatable {
    public var host: String
    public var guest: String
    public var readOnly: Bool
    /// Owner of the files the guest creates; nil: the host directory's owner.
    public var uid: UInt32?
    public var gid: UInt32?
    /// nil: `always` for a read-only volume, `auto` otherwise (ShareOptions).
    public var cache: ShareOptions.Cache?

    public init(host: String, guest: String, readOnly: Bool = false, uid: UInt32? = nil, gid: UInt32? = nil,
                cache: ShareOptions.Cache? = nil) {
        self.host = host; self.guest = guest; self.readOnly = readOnly; self.uid = uid; self.gid = gid; self.cache = cache
    }

    /// Parses `HOST:GUEST[:ro|:rw]` (both paths absolute; HOST made absolute against the working directory).
    public static func parse(_ spec: String) -> Volume? {
        var parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        var readOnly = false
        if parts.count == 3 {
            switch parts.removeLast() {
            case "ro": readOnly = true
            case "rw": readOnly = false
            default: return nil
            }
        }
        guard parts.count == 2, !parts[0].isEmpty, parts[1].hasPrefix("/") else { return nil }
        var host = parts[0]
        if !host.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard getcwd(&buffer, buffer.count) != nil else { return nil }
            host = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } + "/" + host
        }
        return Volume(host: host, guest: parts[1], readOnly: readOnly)
    }

    /// The share this volume binds in slot `tag`: the owner defaults to the directory's.
    func share(tag: String) throws(SandboxError) -> MachineConfig.Share {
        var st = stat()
        guard stat(host, &st) == 0 else { throw .setup("cannot use volume \(host): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw .setup("volume \(host) is not a directory") }
        return MachineConfig.Share(tag: tag, path: host, options: ShareOptions(readOnly: readOnly, uid: uid ?? st.st_uid,
                                                                              gid: gid ?? st.st_gid, cache: cache))
    }
}

extension Sandbox {
    /// The virtio-fs devices of a sandbox with `slots` spare slots and `volumes` bound to the first ones.
    static func shares(slots: Int, volumes: [Volume]) throws(SandboxError) -> [MachineConfig.Share] {
        let count = max(slots, volumes.count)
        var shares: [MachineConfig.Share] = []
        for i in 0..<count {
            let tag = "kiln\(i)"
            if i < volumes.count { shares.append(try volumes[i].share(tag: tag)) }
            else { shares.append(MachineConfig.Share(tag: tag, path: nil, options: ShareOptions(readOnly: true, uid: 0, gid: 0))) }
        }
        return shares
    }

    /// Binds `volumes` to a template's spare slots (kiln0, kiln1, ... in order).
    static func restoredShares(_ volumes: [Volume]) throws(SandboxError) -> [MachineConfig.Share] {
        var shares: [MachineConfig.Share] = []
        for (i, v) in volumes.enumerated() { shares.append(try v.share(tag: "kiln\(i)")) }
        return shares
    }

    /// Mounts each volume at its guest path (created if missing) through the agent: one `mount`
    /// process in the guest per volume (the image must have `mount`, as busybox and Debian do).
    public func mount(_ volumes: [Volume]) async throws(SandboxError) {
        for (i, v) in volumes.enumerated() {
            do {
                _ = try? await agent.makeDirectory(v.guest)
                let argv = ["mount", "-t", "virtiofs"] + (v.readOnly ? ["-o", "ro"] : []) + ["kiln\(i)", v.guest]
                let process = try await agent.exec(Exec(argv: argv, environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]))
                process.closeStdin()
                let (_, stderr, status) = try await process.collect()
                guard status.termination == .exited(code: 0) else {
                    let why = String(decoding: stderr, as: UTF8.self).trimmingTrailingNewlines()
                    throw SandboxError.setup("cannot mount volume \(v.host) at \(v.guest) in the guest: \(why.isEmpty ? "\(status.termination)" : why)")
                }
            } catch let error as SandboxError {
                throw error
            } catch {
                throw .setup("cannot mount volume \(v.host) at \(v.guest) in the guest: \(error)")
            }
        }
    }
}
