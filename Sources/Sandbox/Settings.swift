import Boot
import Devices
import Glibc
import Images
import VMM

/// What a user asks of a sandbox or a VM, from the command line or the service's API, checked
/// in one place before any work starts: a bad value is one `SettingError` naming the setting
/// and what it takes, never a trap or a half-started VM later.
///
/// The front ends fill in what they were given (text goes through the `parse` helpers, which
/// check it the same way) and call `validate()`; the values are then safe to hand to
/// `Sandbox.Configuration`, `MachineConfig` and the jail.
public struct SandboxSettings: Sendable {
    public var cpus = 1
    public var memoryMiB = 256
    /// Seconds to wait for the guest's agent after the VM starts.
    public var bootTimeout: Double = 300
    /// Seconds a command may run; 0: no limit.
    public var commandTimeout: Double = 0
    /// The most processes a command and its descendants may have at once in the guest; nil:
    /// the agent's default (1024), which keeps a fork bomb from taking the guest's agent down.
    public var pids: Int?
    /// The command's RLIMIT_NOFILE (soft and hard); nil: the agent's default (1024 soft, 4096 hard).
    public var openFiles: Int?
    /// A guest kernel file; nil: Kiln's own.
    public var kernel: String?
    public var initrd: String?
    /// `--image`: Kiln's own image by name, a disk file, or an OCI image reference.
    public var image: String?
    /// An ext4 root disk booted through Kiln's agent disk (internal).
    public var rootDisk: String?
    public var disks: [MachineConfig.Disk] = []
    public var net: NetSpec?
    /// `NAME=VALUE` entries.
    public var environment: [String] = []
    /// The console log's cap in bytes (Sandbox.Configuration.consoleLimit).
    public var consoleLimit = Sandbox.defaultConsoleLimit

    public init() {}

    public static let cpuRange = 1...Loader.maxCPUs
    public static let memoryRange = MachineConfig.minimumMemoryMiB...MachineConfig.maximumMemoryMiB
    public static let maximumBootTimeout: Double = 86_400
    /// The agent takes the command's timeout in milliseconds as a UInt32.
    public static let maximumCommandTimeout = Double(UInt32.max / 1000)
    /// The guest kernel's PID_MAX_LIMIT: no pids.max above it can matter.
    public static let pidsRange = 1...4_194_304
    /// 4 KiB (the error messages' tail) to 1 GiB (the jail's smallest RLIMIT_FSIZE).
    /// The guest kernel's default fs.nr_open: no RLIMIT_NOFILE above it can be set.
    public static let openFilesRange = 1...1_048_576
    public static let consoleLimitRange = 4096...(1 << 30)

    /// Checks every value; the first bad one is the error.
    public func validate() throws(SettingError) {
        try Self.check(cpus, .cpus, in: Self.cpuRange)
        try Self.check(memoryMiB, .memory, in: Self.memoryRange)
        try Self.check(seconds: bootTimeout, .bootTimeout)
        try Self.check(seconds: commandTimeout, .timeout)
        if let pids { try Self.check(pids, .pids, in: Self.pidsRange) }
        if let openFiles { try Self.check(openFiles, .openFiles, in: Self.openFilesRange) }
        try Self.check(consoleLimit, .consoleLimit, in: Self.consoleLimitRange)
        if let kernel { try Self.checkFile(kernel, .kernel) }
        if let initrd { try Self.checkFile(initrd, .initrd) }
        if let rootDisk { try Self.checkFile(rootDisk, .rootDisk) }
        if let image { try Self.checkImage(image) }
        for disk in disks { try Self.checkFile(disk.path, .disk) }
        for entry in environment { try Self.checkEnvironment(entry) }
        guard disks.count + (net == nil ? 0 : 1) + 1 <= Layout.maxVirtioDevices else {
            throw SettingError(.disk, "at most \(Layout.maxVirtioDevices - 2) disks with --net and a vsock device", got: "\(disks.count) disks")
        }
    }

    // MARK: - The checks, one per kind of value

    public static func check(_ value: Int, _ setting: Setting, in range: ClosedRange<Int>) throws(SettingError) {
        guard range.contains(value) else { throw SettingError(setting, setting.takes, got: String(value)) }
    }

    public static func check(seconds value: Double, _ setting: Setting) throws(SettingError) {
        let limit = setting == .bootTimeout ? maximumBootTimeout : maximumCommandTimeout
        let low = setting == .bootTimeout ? value > 0 : value >= 0
        guard value.isFinite, low, value <= limit else {
            throw SettingError(setting, value < 0 ? "must not be negative: " + setting.takes : setting.takes, got: format(value))
        }
    }

    /// A file that is read (a kernel, an initramfs) or a disk: a regular file or a block
    /// device, never a directory. A kernel that does not exist is left to the loader, whose
    /// "not found" names it.
    public static func checkFile(_ path: String, _ setting: Setting) throws(SettingError) {
        guard !path.isEmpty, !path.utf8.contains(0) else { throw SettingError(setting, setting.takes, got: path) }
        var st = stat()
        guard stat(path, &st) == 0 else {
            if setting == .kernel && errno == ENOENT { return }
            throw SettingError(setting, setting.takes, got: path, because: String(cString: strerror(errno)))
        }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || type == S_IFBLK else {
            throw SettingError(setting, setting.takes, got: path, because: type == S_IFDIR ? "a directory" : "not a regular file or block device")
        }
    }

    /// `--image`: one of Kiln's images by name (built or looked up later), a disk file, or an
    /// OCI image reference.
    public static func checkImage(_ image: String) throws(SettingError) {
        if image.hasPrefix("/") || image.hasPrefix("./") || image.hasPrefix("../") || access(image, F_OK) == 0 {
            return try checkFile(image, .image)
        }
        if !image.contains("/") && !image.contains(":") && !image.contains("@") {
            guard !image.isEmpty, image.utf8.allSatisfy({ isNameByte($0) }), !image.hasPrefix(".") else {
                throw SettingError(.image, Setting.image.takes, got: image)
            }
            return
        }
        do { _ = try ImageReference(parsing: image) } catch {
            throw SettingError(.image, Setting.image.takes, got: image, because: error.reason)
        }
    }

    /// A template's name, or an OCI image reference used as one (the service's templateID).
    public static func checkTemplate(_ name: String, _ setting: Setting = .template) throws(SettingError) {
        guard name.utf8.count <= 255, !name.isEmpty, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 }), !name.hasPrefix("."),
              // A '/' only as in an OCI image reference (host/name:tag): no empty or dot components.
              !name.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw SettingError(setting, setting.takes, got: name)
        }
    }

    /// `NAME=VALUE`: a non-empty NAME without '=', no NUL anywhere.
    public static func checkEnvironment(_ entry: String) throws(SettingError) {
        guard let eq = entry.firstIndex(of: "="), eq != entry.startIndex, !entry.utf8.contains(0) else {
            throw SettingError(.env, Setting.env.takes, got: entry)
        }
    }

    /// One variable given as a name and a value (the service's envVars).
    public static func checkEnvironment(name: String, value: String) throws(SettingError) {
        guard !name.contains("=") else { throw SettingError(.env, Setting.env.takes, got: name + "=" + value, because: "'=' in the NAME") }
        try checkEnvironment(name + "=" + value)
    }

    // MARK: - Text from the command line, checked as above

    public static func parseInt(_ text: String, _ setting: Setting, in range: ClosedRange<Int>) throws(SettingError) -> Int {
        guard let value = Int(text) else { throw SettingError(setting, setting.takes, got: text) }
        do { try check(value, setting, in: range) } catch { throw SettingError(setting, error.problem, got: text) }
        return value
    }

    public static func parseSeconds(_ text: String, _ setting: Setting) throws(SettingError) -> Double {
        guard let value = Double(text) else { throw SettingError(setting, setting.takes, got: text) }
        do { try check(seconds: value, setting) } catch { throw SettingError(setting, error.problem, got: text) }
        return value
    }

    /// `PATH[,ro|,overlay]`, its file checked.
    public static func parseDisk(_ spec: String) throws(SettingError) -> MachineConfig.Disk {
        guard let disk = MachineConfig.Disk.parse(spec) else { throw SettingError(.disk, Setting.disk.takes, got: spec) }
        do { try checkFile(disk.path, .disk) } catch { throw SettingError(.disk, error.problem, got: spec, because: error.reason) }
        return disk
    }

    /// `--disk-rate`/`--net-rate`: a token bucket per second (docs/net.md, "Rate limits").
    public static func parseRate(_ text: String, _ setting: Setting) throws(SettingError) -> RateLimit {
        guard let limit = RateLimitOptions.parse(text) else { throw SettingError(setting, setting.takes, got: text) }
        return limit
    }

    public static func parseNet(_ spec: String) throws(SettingError) -> NetSpec {
        do { return try NetSpec.parse(spec) } catch {
            guard case .bad(let why) = error else { throw SettingError(.net, Setting.net.takes, got: spec) }
            throw SettingError(.net, Setting.net.takes, got: spec, because: why)
        }
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D
    }

    static func format(_ s: Double) -> String { s == s.rounded() && abs(s) < 1e15 ? String(Int(s)) : String(s) }
}

/// A setting a user gives, with the name each front end knows it by.
public enum Setting: String, Sendable, CaseIterable {
    case cpus, memory, bootTimeout, timeout, pids, kernel, initrd, image, rootDisk, disk, net, env, template, lifetime, consoleLimit, openFiles
    case diskRate, netRate

    /// The command-line option.
    public var option: String {
        switch self {
        case .bootTimeout: return "--boot-timeout"
        case .rootDisk: return "--root-disk"
        case .lifetime: return "--ttl"
        case .consoleLimit: return "--console-limit"
        case .openFiles: return "--open-files"
        case .diskRate: return "--disk-rate"
        case .netRate: return "--net-rate"
        default: return "--" + rawValue
        }
    }

    /// The field of the service's JSON request (E2B's names).
    public var field: String {
        switch self {
        case .env: return "envVars"
        case .template: return "templateID"
        case .lifetime: return "timeout"
        default: return rawValue
        }
    }

    /// What it takes, with the allowed range.
    public var takes: String {
        switch self {
        case .cpus: return "a whole number of vCPUs from \(SandboxSettings.cpuRange.lowerBound) to \(SandboxSettings.cpuRange.upperBound)"
        case .memory:
            return "a whole number of MiB from \(SandboxSettings.memoryRange.lowerBound) to \(SandboxSettings.memoryRange.upperBound)"
        case .bootTimeout: return "a number of seconds above 0, at most \(Int(SandboxSettings.maximumBootTimeout))"
        case .timeout: return "a number of seconds from 0 (no limit) to \(Int(SandboxSettings.maximumCommandTimeout))"
        case .pids:
            return "a whole number of processes from \(SandboxSettings.pidsRange.lowerBound) to \(SandboxSettings.pidsRange.upperBound)"
        case .lifetime: return "a whole number of seconds, 0 or more"
        case .openFiles:
            return "a whole number of open files from \(SandboxSettings.openFilesRange.lowerBound) to \(SandboxSettings.openFilesRange.upperBound)"
        case .consoleLimit:
            return "a whole number of bytes from \(SandboxSettings.consoleLimitRange.lowerBound) to \(SandboxSettings.consoleLimitRange.upperBound)"
        case .kernel: return "a kernel file (vmlinux or bzImage)"
        case .initrd: return "an initramfs file"
        case .rootDisk: return "an ext4 disk file or block device"
        case .image: return "default, debian, an image NAME, a disk file, or an OCI reference [HOST[:PORT]/]NAME[:TAG][@DIGEST]"
        case .disk: return "PATH[,ro|,overlay][,rate=BYTES_PER_S][,ops=N] naming a regular file or block device"
        case .diskRate, .netRate:
            return "BYTES_PER_S[,ops=N][,burst=BYTES][,ops-burst=N], each a whole number from 1 to 2^50 (K, M, G: KiB, MiB, GiB), or 0 for no limit"
        case .net: return "tap=NAME|auto[,mac=xx:xx:xx:xx:xx:xx][,host=IP/PREFIX,guest=IP]"
        case .env: return "NAME=VALUE with a non-empty NAME"
        case .template: return "a template name or image reference (printable ASCII, at most 255 bytes, no '.' or '..' component)"
        }
    }
}

/// One bad setting: which, what it takes and what it got, as one line.
public struct SettingError: Error, Equatable, CustomStringConvertible {
    public let setting: Setting
    /// What it takes, with the range: "a whole number of vCPUs from 1 to 32".
    public let problem: String
    public let value: String
    /// Why the value does not do, when the range does not say: "a directory".
    public let reason: String?

    public init(_ setting: Setting, _ problem: String, got value: String, because reason: String? = nil) {
        self.setting = setting; self.problem = problem; self.value = value; self.reason = reason
    }

    /// For the command line: `--cpus needs a whole number of vCPUs from 1 to 32, got '-1'`.
    public var description: String { message(naming: setting.option) }

    /// For the service's API, naming the JSON field.
    public var apiDescription: String { message(naming: "'\(setting.field)'") }

    public func message(naming name: String) -> String {
        let verb = problem.hasPrefix("must") ? "" : "needs "
        return "\(name) \(verb)\(problem), got '\(Self.printable(value))'" + (reason.map { " (\($0))" } ?? "")
    }

    /// Control characters in a value would break the one line.
    static func printable(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }.prefix(200)))
    }
}

extension Sandbox.Configuration {
    /// What of this configuration a user sets, for `SandboxSettings.validate()`.
    public var settings: SandboxSettings {
        var s = SandboxSettings()
        s.cpus = cpus
        s.memoryMiB = memoryMiB
        s.bootTimeout = bootTimeout
        s.kernel = kernelPath
        s.rootDisk = imagePath
        s.consoleLimit = consoleLimit
        return s
    }
}
