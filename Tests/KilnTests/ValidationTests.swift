import Glibc
import KilnTestSupport
import Sandbox
import Testing
import VMM

/// Bad input to any command is refused in one line naming the option and what it takes, with
/// exit status 2, before any VM starts (issue 14: some of these trapped, hung or booted first).
@Suite(.blocking) struct ValidationTests {
    /// A runtime directory of the test's own: a sandbox that started would leave its directory
    /// (socket, console log) there while it runs.
    static func runtimeDirectory() -> String {
        var template = Array("/tmp/kiln-validation-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    static func entries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static let badInputs: [(arguments: [String], option: String)] = [
        // The four failures of issue 14, and their kin.
        (["run", "--memory", "-5", "--", "true"], "--memory"),
        (["run", "--cpus", "-1", "--", "true"], "--cpus"),
        (["run", "--memory", "20", "--", "true"], "--memory"),
        (["boot", "--disk", "/tmp,ro"], "--disk"),
        (["run", "--boot-timeout", "-1", "--", "true"], "--boot-timeout"),
        (["run", "--boot-timeout", "0", "--", "true"], "--boot-timeout"),
        (["run", "--timeout", "-1", "--", "true"], "--timeout"),
        (["run", "--timeout", "soon", "--", "true"], "--timeout"),
        (["run", "--timeout", "nan", "--", "true"], "--timeout"),
        (["run", "--cpus", "0", "--", "true"], "--cpus"),
        (["run", "--pids", "0", "--", "true"], "--pids"),
        (["run", "--pids", "-1", "--", "true"], "--pids"),
        (["run", "--pids", "4194305", "--", "true"], "--pids"),
        (["run", "--pids", "lots", "--", "true"], "--pids"),
        (["run", "--open-files", "0", "--", "true"], "--open-files"),
        (["run", "--open-files", "1048577", "--", "true"], "--open-files"),
        (["run", "--console-limit", "4095", "--", "true"], "--console-limit"),
        (["run", "--console-limit", "1GiB", "--", "true"], "--console-limit"),
        (["run", "--cpus", "33", "--", "true"], "--cpus"),
        (["run", "--cpus", "many", "--", "true"], "--cpus"),
        (["run", "--memory", "99999999999999999999", "--", "true"], "--memory"),
        (["run", "--memory", "2097152", "--", "true"], "--memory"),
        (["run", "-e", "=value", "--", "true"], "--env"),
        (["run", "--image", "/tmp", "--", "true"], "--image"),
        (["run", "--image", "no such:image ref", "--", "true"], "--image"),
        (["run", "--kernel", "/tmp", "--", "true"], "--kernel"),
        (["run", "--memory"], "--memory"),
        (["run", "--frobnicate", "--", "true"], "--frobnicate"),
        (["run", "--template", "../etc", "--", "true"], "--template"),
        (["run", "--disk-rate", "fast", "--", "true"], "--disk-rate"),
        (["run", "--disk-rate", "10M,ops=0", "--", "true"], "--disk-rate"),
        (["run", "--disk-rate", "2000P", "--", "true"], "--disk-rate"),
        (["run", "--net-rate", "-1", "--", "true"], "--net-rate"),
        (["run", "--net-rate", "1M", "--", "true"], "--net-rate"), // no --net: nothing to limit
        (["boot", "--memory", "-5"], "--memory"),
        (["boot", "--cpus", "-1"], "--cpus"),
        (["boot", "--disk", "/nonexistent/disk.img"], "--disk"),
        (["boot", "--disk", "/tmp/x,bogus"], "--disk"),
        (["boot", "--initrd", "/tmp"], "--initrd"),
        (["boot", "--net", "tap="], "--net"),
        (["boot", "--disk", "/tmp/x,rate=0"], "--disk"),
        (["boot", "--net", "tap=auto,rx-rate=fast"], "--net"),
        (["boot", "--jail-uid", "-1"], "--jail-uid"),
        (["template", "create", "--memory", "20"], "--memory"),
        (["template", "create", "--cpus", "-1"], "--cpus"),
        (["template", "create", "--boot-timeout", "-1"], "--boot-timeout"),
        (["restore", "/nonexistent", "--vsock-cid", "x"], "--vsock-cid"),
        (["serve", "--listen", "nowhere"], "--listen"),
        (["run", "-v", "/etc/hostname:/f", "--", "true"], "-v"), // a file, not a directory
        (["run", "-v", "/nonexistent/dir:/d", "--", "true"], "-v"),
        (["serve", "--console-limit", "3"], "--console-limit"),
        (["serve", "--disk-rate", "bogus"], "--disk-rate"),
        (["serve", "--net-rate", "1M,ops=0"], "--net-rate"),
    ]

    @Test(arguments: badInputs)
    func badInputIsOneLineAndExit2BeforeAnyVM(_ arguments: [String], _ option: String) throws {
        let runtime = Self.runtimeDirectory()
        defer { rmdir(runtime) }
        let kiln = try KilnProcess(arguments, environment: ["KILN_RUNTIME_DIR": runtime])
        kiln.closeInput()
        let status = try kiln.wait(seconds: 60)
        let stderr = kiln.errorOutput
        #expect(status == 2, "\(arguments): \(stderr)")
        #expect(stderr.hasPrefix("kiln: ") && stderr.hasSuffix("\n") && stderr.dropLast().split(separator: "\n").count == 1,
                "\(arguments): one line, got \(stderr)")
        #expect(stderr.contains(option), "\(arguments): the line names \(option): \(stderr)")
        // Nothing started: no console output, no sandbox directory, no boot message.
        #expect(kiln.output.isEmpty, "\(arguments): \(kiln.output)")
        #expect(Self.entries(runtime).isEmpty, "\(arguments): \(Self.entries(runtime))")
        #expect(!stderr.contains("booting"))
    }

    @Test func rangesAreInTheMessage() throws {
        let kiln = try KilnProcess(["run", "--cpus", "-1", "--", "true"])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 60) == 2)
        #expect(kiln.errorOutput == "kiln: --cpus needs a whole number of vCPUs from 1 to 32, got '-1'\n", "\(kiln.errorOutput)")
        let memory = try KilnProcess(["run", "--memory", "20", "--", "true"])
        memory.closeInput()
        #expect(try memory.wait(seconds: 60) == 2)
        #expect(memory.errorOutput == "kiln: --memory needs a whole number of MiB from 32 to 1048576, got '20'\n", "\(memory.errorOutput)")
    }

    @Test func helpIsOnStdoutWithExit0() throws {
        for arguments in [["--help"], ["run", "--help"], ["help", "run"], ["template", "create", "--help"], ["image", "--help"]] {
            let kiln = try KilnProcess(arguments)
            kiln.closeInput()
            #expect(try kiln.wait(seconds: 60) == 0, "\(arguments): \(kiln.errorOutput)")
            #expect(kiln.output.contains("USAGE:"), "\(arguments): \(kiln.output)")
            #expect(kiln.errorOutput.isEmpty)
        }
        let run = try KilnProcess(["run", "--help"])
        run.closeInput()
        _ = try run.wait(seconds: 60)
        for option in ["--image", "--cpus", "--memory", "--env", "--timeout", "--pids", "--open-files", "--console-limit", "--boot-timeout", "--template", "--no-template", "--no-jail",
                       "--disk-rate", "--net-rate"] {
            #expect(run.output.contains(option), "\(option) in kiln run --help")
        }
        #expect(!run.output.contains("--root-disk"), "internal options stay hidden")
    }

    // MARK: - The type itself

    @Test func defaultsAreValid() throws {
        try SandboxSettings().validate()
    }

    @Test func eachBadValueNamesItsSetting() {
        func failure(_ change: (inout SandboxSettings) -> Void) -> SettingError? {
            var s = SandboxSettings()
            change(&s)
            do { try s.validate(); return nil } catch { return error }
        }
        #expect(failure { $0.cpus = 0 }?.setting == .cpus)
        #expect(failure { $0.cpus = -1 }?.description == "--cpus needs a whole number of vCPUs from 1 to 32, got '-1'")
        #expect(failure { $0.memoryMiB = 31 }?.setting == .memory)
        #expect(failure { $0.memoryMiB = Int.min }?.setting == .memory)
        #expect(failure { $0.bootTimeout = -1 }?.description.hasPrefix("--boot-timeout must not be negative") == true)
        #expect(failure { $0.bootTimeout = .infinity }?.setting == .bootTimeout)
        #expect(failure { $0.commandTimeout = .nan }?.setting == .timeout)
        #expect(failure { $0.kernel = "/tmp" }?.description.hasSuffix("(a directory)") == true)
        #expect(failure { $0.kernel = "/nonexistent/vmlinux" } == nil, "a missing kernel is the loader's 'not found'")
        #expect(failure { $0.image = "/tmp" }?.setting == .image)
        #expect(failure { $0.image = "UPPER/Case:Bad Tag" }?.setting == .image)
        #expect(failure { $0.image = "default" } == nil)
        #expect(failure { $0.image = "docker.io/library/alpine:3.20" } == nil)
        #expect(failure { $0.disks = [MachineConfig.Disk(path: "/tmp")] }?.setting == .disk)
        #expect(failure { $0.environment = ["A=1", "=2"] }?.setting == .env)
        #expect(failure { $0.environment = ["NOEQUALS"] }?.setting == .env)
        #expect(failure { $0.environment = ["A=", "B=x=y"] } == nil)
    }

    @Test func textIsCheckedTheSameWay() throws {
        #expect(try SandboxSettings.parseInt("4", .cpus, in: SandboxSettings.cpuRange) == 4)
        #expect(throws: SettingError.self) { try SandboxSettings.parseInt("4.5", .cpus, in: SandboxSettings.cpuRange) }
        #expect(throws: SettingError.self) { try SandboxSettings.parseSeconds("-0.5", .timeout) }
        #expect(try SandboxSettings.parseSeconds("1.5", .timeout) == 1.5)
        do { _ = try SandboxSettings.parseDisk("/tmp,ro"); Issue.record("a directory is no disk") } catch {
            #expect(error.description == "--disk needs PATH[,ro|,overlay][,rate=BYTES_PER_S][,ops=N] naming a regular file or block device, got '/tmp,ro' (a directory)")
        }
        do { _ = try SandboxSettings.parseRate("fast", .diskRate); Issue.record("not a rate") } catch {
            #expect(error.description == "--disk-rate needs BYTES_PER_S[,ops=N][,burst=BYTES][,ops-burst=N], each a whole number from 1 to 2^50 (K, M, G: KiB, MiB, GiB), or 0 for no limit, got 'fast'")
        }
        #expect(try SandboxSettings.parseRate("1M,ops=10", .netRate).operations?.size == 10)
        do { _ = try SandboxSettings.parseNet("tap=x,mac=zz"); Issue.record("a bad MAC") } catch {
            #expect(error.setting == .net && error.description.contains("bad MAC address 'zz'"))
        }
    }

    @Test func theServiceNamesItsFields() {
        let e = SettingError(.env, Setting.env.takes, got: "=x")
        #expect(e.apiDescription == "'envVars' needs NAME=VALUE with a non-empty NAME, got '=x'")
        #expect(SettingError(.lifetime, "must not be negative: " + Setting.lifetime.takes, got: "-1").apiDescription.hasPrefix("'timeout' must not be negative"))
    }
}
