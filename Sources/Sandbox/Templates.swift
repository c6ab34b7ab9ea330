import AgentProtocol
import Glibc
import Images
import KilnNet
import VMM

/// Templates: snapshots of a sandbox taken right after its agent came up, kept in
/// `<cache>/templates/NAME`. A sandbox restored from one starts in milliseconds instead of booting.
/// `kiln run` keeps one automatic template per (kernel, image, memory, vCPUs, host profile),
/// named by `autoName`, and makes it on first use.
public enum Templates {
    public static var cacheDirectory: String {
        if let p = getenv("KILN_CACHE_DIR"), p.pointee != 0 { return String(cString: p) }
        return "/var/cache/kiln"
    }

    public static var directory: String { cacheDirectory + "/templates" }

    public static func path(_ name: String) -> String { directory + "/" + name }

    /// Whether `name` is a usable template: complete, written by this Kiln for this host, and its
    /// disks' files the ones it was made from (`problem`).
    public static func usable(_ name: String, hostProfile: HostProfile = .detect()) -> Bool {
        problem(name, hostProfile: hostProfile) == nil
    }

    /// Why template `name` cannot be restored, in one line; nil when it can.
    public static func problem(_ name: String, hostProfile: HostProfile = .detect()) -> String? {
        guard access(path(name), F_OK) == 0 else { return "no usable template named '\(name)' in \(Templates.directory)" }
        return unusableReason(name, hostProfile: hostProfile).map { "template '\(name)' is unusable: \($0)" }
    }

    /// What is wrong with template `name` (a damaged file, another Kiln or host, a disk changed
    /// since it was made), without the template's name; nil when it is usable.
    public static func unusableReason(_ name: String, hostProfile: HostProfile = .detect()) -> String? {
        unusableReason(directory: path(name), hostProfile: hostProfile)
    }

    /// The same for the template in `directory`.
    static func unusableReason(directory: String, hostProfile: HostProfile) -> String? {
        let info: SnapshotInfo
        do throws(MachineError) {
            info = try SnapshotInfo.read(directory: directory)
            try info.checkMemoryFile(in: directory)
        } catch {
            if case .snapshot(_, let why) = error { return why }
            return "\(error)"
        }
        guard info.kilnVersion == kilnVersion else { return "made by another Kiln (\(info.kilnVersion))" }
        guard info.hostProfile == hostProfile else { return "made for another host (\(info.hostProfile.rawValue))" }
        return changedDisk(in: directory).map { "made from \($0), which has changed since" }
    }

    /// The file of a template that holds the identity (inode, size, mtime) of each disk its guest
    /// only reads (the image, the agent's disk), as it was when the template was made.
    static let disksFile = "disks"

    /// The identity line of `path`: "INODE SIZE MTIME PATH"; nil when it cannot be read.
    static func diskIdentity(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let ns = String(st.st_mtim.tv_nsec), padded = String(repeating: "0", count: max(0, 9 - ns.count)) + ns
        return "\(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(padded) \(path)"
    }

    /// The first disk of the template in `directory` whose file is no longer the one it was made
    /// from (rewritten in place, truncated, replaced, gone): its guest's saved page cache and
    /// filesystem state describe the old contents, so a restore would read another disk under them.
    /// A template made before this record existed is not checked.
    static func changedDisk(in directory: String) -> String? {
        guard let text = Files.read(directory + "/" + disksFile).map({ String(decoding: $0, as: UTF8.self) }) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard fields.count == 4 else { return "a malformed line in \(directory)/\(disksFile)" }
            if diskIdentity(fields[3]) != String(line) { return fields[3] }
        }
        return nil
    }

    /// Records the identity of every disk the snapshot in `directory` opens read-only or under a
    /// private overlay (`changedDisk`). A writable disk is the guest's own and may change.
    static func recordDisks(of directory: String) throws(SandboxError) {
        let info: SnapshotInfo
        do { info = try SnapshotInfo.read(directory: directory) } catch { throw .setup("\(error)") }
        var lines: [String] = []
        for disk in info.config.disks where disk.readOnly || disk.overlay {
            guard let line = diskIdentity(disk.path) else { throw .setup("cannot stat the template's disk \(disk.path): \(String(cString: strerror(errno)))") }
            lines.append(line)
        }
        let file = directory + "/" + disksFile
        guard Files.write(file, Array(lines.map { $0 + "\n" }.joined().utf8)) else { throw .setup("cannot write \(file): \(String(cString: strerror(errno)))") }
    }

    /// A name that changes whenever the kernel or image file changes (path, size or mtime), or
    /// the VM's shape does.
    /// `withNetwork` names the template with (true) or without a network device whatever `config` has.
    public static func autoName(for config: Sandbox.Configuration, withNetwork: Bool? = nil) -> String {
        func identity(_ path: String) -> String {
            let real = resolvedPath(path)
            var st = stat()
            _ = stat(real, &st)
            return "\(real):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
        }
        let key = (["kernel=" + identity(config.kernelPath), "image=" + identity(config.imagePath),
                   "agent=" + (config.agentDisk.map(identity) ?? ""),
                   "memory=\(config.memoryMiB)", "cpus=\(config.cpus)", "profile=\(config.hostProfile.rawValue)",
                   "args=" + config.kernelArguments.joined(separator: " "), "kiln=\(kilnVersion)",
                   "share-slots=\(config.shareSlots)"]
            // A template with a network device is another template (names without one are unchanged).
            + ((withNetwork ?? (config.network != nil)) ? ["net=" + SandboxNetwork.kernelParameter] : []))
            .joined(separator: "\n")
        // FNV-1a, 64 bits: a cache name, not a security boundary.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let hex = String(hash, radix: 16)
        return "auto-" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// `path` with every link resolved (realpath), or `path` itself when it cannot be resolved.
    static func resolvedPath(_ path: String) -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        return realpath(path, &resolved) != nil ? resolved.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } : path
    }

    /// Boots a sandbox, snapshots it as template `name` (replacing an older one atomically) and
    /// returns the still-running sandbox, so the caller can use the boot it paid for.
    /// `imageConfig`, kept beside the snapshot (`imageConfig(_:)`), is the run config that commands
    /// started from the template get (ImageCommand).
    public static func create(_ name: String, config: Sandbox.Configuration,
                              imageConfig: ImageConfiguration.RunConfig? = nil) async throws(SandboxError) -> Sandbox {
        let sandbox = try await bootForTemplate(name, config: config)
        do { try save(sandbox, as: name, imageConfig: imageConfig) } catch {
            sandbox.stop()
            throw error
        }
        return sandbox
    }

    /// The first half of `create`: a sandbox booted and brought to the state a template saves.
    /// A caller that can use the sandbox even when `save` fails (a full disk) keeps it then.
    public static func bootForTemplate(_ name: String, config: Sandbox.Configuration) async throws(SandboxError) -> Sandbox {
        try checkName(name)
        // A template carries spare share slots, never a bound share (a snapshot of one is refused).
        var config = config
        config.volumes = []
        // The image by the file it is now, not by a link: a template's disk is read under the
        // guest's saved page cache and ext4 state, so a link moved later to another image (a new
        // build relinks images/NAME.ext4) must not give its restores a different disk.
        config.imagePath = resolvedPath(config.imagePath)
        config.agentDisk = config.agentDisk.map(resolvedPath)
        let sandbox = try await Sandbox.start(config)
        // Run one command first: busybox's pages and the agent's spawn path are then in the
        // guest's memory when it is saved, instead of being read in by every restored sandbox.
        if let warm = try? await sandbox.agent.exec(Exec(argv: ["/bin/sh", "-c", "true"], environment: ["PATH=/bin:/usr/bin"])) {
            warm.closeStdin()
            _ = try? await warm.collect()
        }
        // And one TCP connection (the agent's own relay, in every image, to a closed loopback
        // port): a guest's first one costs 8-10 s of emulated kernel time here, once per boot
        // (docs/net.md, "A fresh sandbox's first connection"); made before the snapshot, no
        // restored sandbox pays it again.
        if let warm = try? await sandbox.agent.exec(PortForward.relay(1)) {
            warm.closeStdin()
            _ = try? await warm.collect()
        }
        // A Ping answered means the agent handled every frame sent before it: the session stands
        // at a frame boundary, so the snapshot records it and clones attach to it (AgentSession).
        _ = try? await sandbox.agent.ping()
        return sandbox
    }

    /// The second half of `create`: snapshots `sandbox` (from `bootForTemplate`) as template
    /// `name` in `directory` (the cache's by default), replacing an older one. With
    /// `keepingUsable`, a usable template of that name that appeared meanwhile (another `kiln
    /// run` of the same image, which made the same automatic template) is kept instead. On
    /// failure nothing of it is left in the cache and the sandbox runs on.
    public static func save(_ sandbox: Sandbox, as name: String, imageConfig: ImageConfiguration.RunConfig? = nil,
                            in directory: String = Templates.directory, keepingUsable hostProfile: HostProfile? = nil) throws(SandboxError) {
        try checkName(name)
        func path(_ name: String) -> String { directory + "/" + name }
        Files.makeDirectories(directory)
        sweepStaging(in: directory)
        let staging = path(".\(name).tmp-\(getpid())")
        Files.removeFlatDirectory(staging)
        do {
            try sandbox.snapshot(to: staging)
            try recordDisks(of: staging)
            if let imageConfig { try writeImageConfig(imageConfig, to: staging + "/" + imageConfigFile) }
        } catch {
            Files.removeFlatDirectory(staging)
            throw error
        }
        try install(staging, as: path(name)) { final in
            guard let hostProfile else { return false }
            return unusableReason(directory: final, hostProfile: hostProfile) == nil
        }
    }

    /// Moves the staged template directory `staging` to `final`, in one rename where there is no
    /// `final` yet (a restore never sees half a template, nor none where there was one). An
    /// existing `final` is kept (and `staging` removed) when `keep` says so, and otherwise
    /// replaced: moved aside, then removed after the rename, so a restore that looks between the
    /// two renames finds no template rather than a mix of two.
    static func install(_ staging: String, as final: String, keep: (String) -> Bool) throws(SandboxError) {
        if rename(staging, final) == 0 { return }
        guard errno == ENOTEMPTY || errno == EEXIST else {
            let e = errno
            Files.removeFlatDirectory(staging)
            throw .setup("cannot install template \(final): \(String(cString: strerror(e)))")
        }
        if keep(final) {
            Files.removeFlatDirectory(staging)
            return
        }
        let slash = final.lastIndex(of: "/").map { final.index(after: $0) } ?? final.startIndex
        let old = String(final[..<slash]) + ".\(final[slash...]).old-\(getpid())"
        _ = rename(final, old)
        if rename(staging, final) != 0 {
            let e = errno
            Files.removeFlatDirectory(staging)
            throw .setup("cannot install template \(final): \(String(cString: strerror(e)))")
        }
        Files.removeFlatDirectory(old)
    }

    static func checkName(_ name: String) throws(SandboxError) {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else { throw .setup("invalid template name '\(name)'") }
    }

    /// Removes what a `save` killed half-way left: `.NAME.tmp-PID` and `.NAME.old-PID` of a
    /// process that no longer runs (no template is ever read from a name starting with '.', but
    /// each holds a whole memory file).
    static func sweepStaging(in directory: String) {
        for entry in Files.entries(directory) where entry.hasPrefix(".") {
            guard entry.contains(".tmp-") || entry.contains(".old-"), let dash = entry.lastIndex(of: "-"),
                  let pid = pid_t(entry[entry.index(after: dash)...]), pid > 0 else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { Files.removeFlatDirectory(directory + "/" + entry) }
        }
    }

    /// The file of a template that holds its image's run config (JSON, a RunConfig object).
    static let imageConfigFile = "image-config.json"

    /// The run config template `name` was made with (`create(_:config:imageConfig:)`), if any.
    public static func imageConfig(_ name: String) throws(SandboxError) -> ImageConfiguration.RunConfig? {
        try imageConfig(snapshotDirectory: path(name))
    }

    /// The run config kept beside the snapshot in `directory` (a template's, or one the service
    /// copied beside a pause or saved snapshot), if any.
    public static func imageConfig(snapshotDirectory directory: String) throws(SandboxError) -> ImageConfiguration.RunConfig? {
        let file = directory + "/" + imageConfigFile
        guard access(file, F_OK) == 0 else { return nil }
        guard let bytes = Files.read(file) else { throw .setup("cannot read \(file)") }
        do { return try ImageConfiguration.RunConfig.decode(json: bytes) } catch { throw .setup("\(file): \(error)") }
    }

    /// Keeps `config` beside the snapshot in `directory`.
    public static func writeImageConfig(_ config: ImageConfiguration.RunConfig, snapshotDirectory directory: String) throws(SandboxError) {
        try writeImageConfig(config, to: directory + "/" + imageConfigFile)
    }

    static func writeImageConfig(_ config: ImageConfiguration.RunConfig, to file: String) throws(SandboxError) {
        let bytes: [UInt8]
        do { bytes = try config.json() } catch { throw .setup("cannot encode the image config: \(error)") }
        guard Files.write(file, bytes) else { throw .setup("cannot write \(file): \(String(cString: strerror(errno)))") }
    }

    /// Template names in the cache.
    public static func list() -> [String] {
        Files.entries(directory).filter { !$0.hasPrefix(".") }.sorted()
    }

    public static func remove(_ name: String) -> Bool {
        guard !name.isEmpty, !name.contains("/"), access(path(name), F_OK) == 0 else { return false }
        Files.removeFlatDirectory(path(name))
        return true
    }

}
