import FoundationEssentials
import Glibc

/// A tenant's named volume (E2B's volumes, e2b-dev/infra spec/openapi.yml `/volumes`): a directory
/// the service owns, `STATE/volumes/TENANT/ID/`, described by `STATE/volumes/TENANT/ID.json`, that
/// sandboxes of the same tenant mount read-write over virtio-fs (docs/volumes.md, "In the service").
struct VolumeRecord: Codable, Sendable, Equatable {
    var id: String
    var name: String
    var tenant: String
    var createdAt: Double
    /// E2B's volume token (for its volume content API, which Kiln does not serve).
    var token: String
}

/// A volume mounted in a sandbox, as its record keeps it.
struct MountedVolume: Codable, Sendable, Equatable {
    var volumeID: String
    var name: String
    var path: String
}

// MARK: The JSON bodies

/// E2B's `NewVolume`.
struct NewVolumeRequest: Decodable, Sendable { var name: String }

/// E2B's `Volume` (the list answer).
struct VolumeBody: Encodable, Sendable { var volumeID: String; var name: String }

/// E2B's `VolumeAndToken` (the create and get answers).
struct VolumeAndTokenBody: Encodable, Sendable { var volumeID: String; var name: String; var token: String }

/// E2B's `SandboxVolumeMount`: a volume, by name, at a path in the guest.
struct VolumeMountRequest: Codable, Sendable, Equatable { var name: String; var path: String }

// MARK: The store

/// The volumes on disk. Every operation is synchronous and runs on the manager's actor, so a name
/// is checked and taken, or a volume checked unused and removed, with nothing in between.
struct VolumeStore: Sendable {
    let root: String
    /// The owner of a new volume's directory, nil: the service's own user. As root this is the
    /// uid and gid of E2B's `user` (1000), which the guest's commands run as: the jailed VMM runs
    /// as a share's owner and the guest sees that owner, so `user` can write in its volume.
    let owner: (uid: UInt32, gid: UInt32)?

    static let maxNameLength = 128
    /// Volumes one tenant may have.
    static let maxPerTenant = 100

    /// E2B's rule for names (`^[a-zA-Z0-9_-]+$`), with a length limit of ours.
    static func checkName(_ name: String) throws(APIError) {
        guard !name.isEmpty, name.utf8.count <= maxNameLength, name.utf8.allSatisfy(isNameByte) else {
            throw APIError(400, "invalid volume name '\(name.prefix(200))': use 1 to \(maxNameLength) letters, digits, '_' or '-'")
        }
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
    }

    /// A tenant's directory name: its name where that is all name bytes, each other byte as %XX
    /// ('%' is never a name byte, so two tenants never share a directory; '.' and '/' never appear).
    static func directoryName(tenant: String) -> String {
        var out = ""
        for b in tenant.utf8 {
            if isNameByte(b) { out.append(Character(Unicode.Scalar(b))) } else {
                out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
            }
        }
        return out
    }

    func tenantDirectory(_ tenant: String) -> String { root + "/" + Self.directoryName(tenant: tenant) }

    /// The host directory a volume's files are in.
    func dataDirectory(_ v: VolumeRecord) -> String { tenantDirectory(v.tenant) + "/" + v.id }

    func list(tenant: String) -> [VolumeRecord] {
        let dir = tenantDirectory(tenant)
        return FileIO.entries(dir).filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.compactMap { name in
            guard let bytes = try? FileIO.read(dir + "/" + name),
                  let v = try? JSONDecoder().decode(VolumeRecord.self, from: Data(bytes)), v.tenant == tenant else { return nil }
            return v
        }.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// A tenant's volume by id; another tenant's id is answered as one that never existed.
    func get(tenant: String, id: String) throws(APIError) -> VolumeRecord {
        guard let v = list(tenant: tenant).first(where: { $0.id == id }) else { throw APIError(404, "volume \(id) not found") }
        return v
    }

    func named(tenant: String, _ name: String) -> VolumeRecord? { list(tenant: tenant).first { $0.name == name } }

    func create(tenant: String, name: String) throws(APIError) -> VolumeRecord {
        try Self.checkName(name)
        let existing = list(tenant: tenant)
        guard !existing.contains(where: { $0.name == name }) else { throw APIError(409, "volume '\(name)' already exists") }
        guard existing.count < Self.maxPerTenant else {
            throw APIError(429, "tenant \(tenant) has reached its limit of \(Self.maxPerTenant) volumes")
        }
        let v = VolumeRecord(id: "vol-" + Random.hex(bytes: 10), name: name, tenant: tenant, createdAt: Timestamps.now(),
                             token: Random.hex(bytes: 24))
        let tenantDir = tenantDirectory(tenant), data = dataDirectory(v)
        do {
            // The tenant's directory is the service's alone (0700): no host user but root reaches
            // a volume by path; a jailed VMM opens its volumes as root, before it drops to their owner.
            try FileIO.makeDirectories(tenantDir)
            guard mkdir(data, 0o700) == 0 else { throw FileIO.Failure(description: "mkdir \(data): \(String(cString: strerror(errno)))") }
            if let owner { try Self.give(data, to: owner) }
            // The record last: a volume is listed only once its directory is ready.
            try FileIO.writeAtomically(tenantDir + "/" + v.id + ".json", Array(try JSONEncoder().encode(v)))
        } catch {
            FileIO.removeTree(data)
            throw APIError(500, "cannot create volume '\(name)': \(error)")
        }
        return v
    }

    /// Changes the owner of the directory just made, through a descriptor of it (no symlink followed).
    static func give(_ directory: String, to owner: (uid: UInt32, gid: UInt32)) throws(FileIO.Failure) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw FileIO.Failure(description: "open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fchown(fd, owner.uid, owner.gid) == 0 else {
            throw FileIO.Failure(description: "chown \(directory): \(String(cString: strerror(errno)))")
        }
    }

    /// Removes the record (the volume is gone for the API) and moves the files aside, to
    /// `.deleting-ID`; returns that directory, for `FileIO.removeTree` off the manager's actor (a
    /// volume may hold any number of files). `sweep` removes what a crash left of such directories.
    func delete(_ v: VolumeRecord) throws(APIError) -> String {
        let dir = tenantDirectory(v.tenant)
        guard unlink(dir + "/" + v.id + ".json") == 0 || errno == ENOENT else {
            throw APIError(500, "cannot delete volume \(v.id): \(String(cString: strerror(errno)))")
        }
        let trash = dir + "/.deleting-" + v.id
        return rename(dataDirectory(v), trash) == 0 ? trash : dataDirectory(v)
    }

    /// The files of volumes whose delete did not finish (the service stopped half-way).
    func leftovers() -> [String] {
        FileIO.entries(root).flatMap { tenant in
            FileIO.entries(root + "/" + tenant).filter { $0.hasPrefix(".deleting-") }.map { root + "/" + tenant + "/" + $0 }
        }
    }
}

// MARK: Mounts in a create request

extension VolumeMountRequest {
    /// Guest paths a volume may not cover: the root, and the kernel's own file systems.
    static let reservedPaths = ["/proc", "/sys", "/dev"]

    /// An absolute path of plain components: no `.`, `..` or empty ones, not `/`, nothing reserved.
    static func checkPath(_ path: String) throws(APIError) {
        let why: String?
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if !path.hasPrefix("/") { why = "must be absolute" }
        else if path == "/" { why = "must not be / (mount a volume below it)" }
        else if path.utf8.count > 1024 { why = "is longer than 1024 bytes" }
        else if path.utf8.contains(0) { why = "holds a NUL byte" }
        else if parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) { why = "must not hold '.', '..' or empty components" }
        else if let r = reservedPaths.first(where: { path == $0 || path.hasPrefix($0 + "/") }) { why = "must not be in \(r)" }
        else { why = nil }
        if let why { throw APIError(400, "volumeMounts: path '\(path.prefix(200))' \(why)") }
    }

    /// Checks a create's mounts: paths, names, no path or volume twice, at most `slots` of them.
    static func check(_ mounts: [VolumeMountRequest], slots: Int) throws(APIError) {
        guard mounts.count <= slots else {
            throw APIError(400, "volumeMounts: at most \(slots) volumes per sandbox, got \(mounts.count)")
        }
        var paths = Set<String>(), names = Set<String>()
        for m in mounts {
            do throws(APIError) { try VolumeStore.checkName(m.name) } catch { throw APIError(400, "volumeMounts: " + error.message) }
            try checkPath(m.path)
            guard paths.insert(m.path).inserted else { throw APIError(400, "volumeMounts: path '\(m.path)' is given twice") }
            guard names.insert(m.name).inserted else { throw APIError(400, "volumeMounts: volume '\(m.name)' is mounted twice") }
        }
    }
}
