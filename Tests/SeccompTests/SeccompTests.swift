import CSandbox
import Glibc
import Testing
@testable import Seccomp

/// The policy files, the embedded copies and the BPF they compile to, run through a small
/// classic-BPF interpreter (the kernel's own run is covered by KilnTests/SeccompBootTests).
@Suite struct PolicyFileTests {
    static var securityDir: String {
        var path = #filePath // <root>/Tests/SeccompTests/SeccompTests.swift
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) }
        return path + "/Security/seccomp"
    }

    func read(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test(arguments: ThreadKind.allCases)
    func embeddedPolicyMatchesItsFileAndCompiles(_ kind: ThreadKind) throws {
        let file = try #require(read("\(Self.securityDir)/\(kind.rawValue).policy"), "Security/seccomp/\(kind.rawValue).policy")
        // The generator drops nothing but the file's final newline.
        #expect(kind.policyText + "\n" == file, "run Scripts/generate-seccomp.sh")
        let policy = try kind.policy()
        #expect(!policy.syscalls.isEmpty)
        for mode in [SeccompMode.kill, .trap, .log] {
            _ = try Filter(policy, defaultAction: mode.defaultAction)
        }
    }

    @Test func everyPolicyFileBelongsToAThreadKind() throws {
        guard let dir = opendir(Self.securityDir) else { Issue.record("no \(Self.securityDir)"); return }
        defer { closedir(dir) }
        var names: Set<String> = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".policy") { names.insert(String(name.dropLast(7))) }
        }
        #expect(names == Set(ThreadKind.allCases.map(\.rawValue)))
    }

    @Test func syscallTableHasX8664Numbers() {
        #expect(syscallNumbers["read"] == 0)
        #expect(syscallNumbers["ioctl"] == 16)
        #expect(syscallNumbers["getppid"] == 110)
        #expect(syscallNumbers["seccomp"] == 317)
        #expect(syscallNumbers.count > 350)
    }
}

@Suite struct PolicyParserTests {
    @Test func linesCommentsIoctlsAndConditions() throws {
        let p = try Policy(parsing: """
            # a comment
            read            # trailing comment

            ioctl KVM_RUN
            socket arg0 == AF_UNIX, arg1 & SOCK_DGRAM == 0
            mprotect arg2 & PROT_EXEC == 0
            openat errno EACCES
            fcntl arg1 == 0x4|1
            """)
        #expect(p.rules.count == 6)
        #expect(p.rules[0] == Policy.Rule(syscall: "read", number: 0, conditions: [], errno: nil))
        #expect(p.rules[1].conditions == [Policy.Condition(argument: 1, mask: nil, value: 0xAE80)]) // _IO(0xAE, 0x80)
        #expect(p.rules[2].conditions == [Policy.Condition(argument: 0, mask: nil, value: 1),
                                          Policy.Condition(argument: 1, mask: 2, value: 0)])
        #expect(p.rules[3].conditions == [Policy.Condition(argument: 2, mask: 4, value: 0)])
        #expect(p.rules[4].errno == 13)
        #expect(p.rules[5].conditions[0].value == 5)
        #expect(p.syscalls == ["read", "ioctl", "socket", "mprotect", "fcntl"])
    }

    @Test func errorsNameTheLine() {
        #expect(throws: Policy.ParseError(line: 2, message: "unknown x86_64 system call 'frobnicate'")) {
            try Policy(parsing: "read\nfrobnicate\n")
        }
        #expect(throws: Policy.ParseError(line: 1, message: "unknown constant 'KVM_NOPE'")) {
            try Policy(parsing: "ioctl KVM_NOPE")
        }
        #expect(throws: Policy.ParseError.self) { try Policy(parsing: "socket arg7 == 1") }
        #expect(throws: Policy.ParseError.self) { try Policy(parsing: "socket arg0 = 1") }
    }
}

/// Classic BPF as seccomp runs it, enough for Kiln's filters: LD W ABS, ALU AND K, JEQ/JGE K, RET K.
func run(_ program: [sock_filter], nr: Int32, arch: UInt32 = KILN_AUDIT_ARCH_X86_64, args: [UInt64] = []) -> UInt32 {
    var data = [UInt8](repeating: 0, count: 64)
    func put(_ v: UInt32, at o: Int) { for i in 0..<4 { data[o + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    put(UInt32(bitPattern: nr), at: Int(KILN_SECCOMP_DATA_NR))
    put(arch, at: Int(KILN_SECCOMP_DATA_ARCH))
    for (i, a) in args.enumerated() {
        put(UInt32(truncatingIfNeeded: a), at: Int(KILN_SECCOMP_DATA_ARGS) + 8 * i)
        put(UInt32(truncatingIfNeeded: a >> 32), at: Int(KILN_SECCOMP_DATA_ARGS) + 8 * i + 4)
    }
    var a: UInt32 = 0, pc = 0
    while pc < program.count {
        let ins = program[pc]
        pc += 1
        switch ins.code {
        case 0x20: a = (0..<4).reduce(0) { $0 | UInt32(data[Int(ins.k) + $1]) << (8 * $1) }
        case 0x54: a &= ins.k
        case 0x15: pc += Int(a == ins.k ? ins.jt : ins.jf)
        case 0x35: pc += Int(a >= ins.k ? ins.jt : ins.jf)
        case 0x06: return ins.k
        default: Issue.record("unexpected opcode \(ins.code)"); return 0
        }
    }
    Issue.record("fell off the end of the program")
    return 0
}

@Suite struct FilterTests {
    let kill = KILN_SECCOMP_RET_KILL_PROCESS, allow = KILN_SECCOMP_RET_ALLOW
    func nr(_ name: String) -> Int32 { syscallNumbers[name]! }
    func constant(_ name: String) -> UInt64 { policyConstants[name]! }

    @Test func vcpuFilterAllowsKVMRunButNotOtherRequestsOrCalls() throws {
        let f = try Filter(ThreadKind.vcpu.policy(), defaultAction: kill).instructions
        #expect(run(f, nr: nr("ioctl"), args: [5, constant("KVM_RUN")]) == allow)
        // Only the low 32 bits of the request count, as in the kernel's ioctl.
        #expect(run(f, nr: nr("ioctl"), args: [5, 0xFFFF_FFFF_0000_0000 | constant("KVM_RUN")]) == allow)
        #expect(run(f, nr: nr("ioctl"), args: [5, constant("KVM_CREATE_VM")]) == kill)
        #expect(run(f, nr: nr("ioctl"), args: [5, constant("KVM_SET_USER_MEMORY_REGION")]) == kill)
        #expect(run(f, nr: nr("write")) == allow)
        // The console log's rotation (Sources/VMM/Console.swift) empties and reads, never writes at an offset.
        #expect(run(f, nr: nr("ftruncate")) == allow)
        #expect(run(f, nr: nr("pread64")) == allow)
        for forbidden in ["getppid", "execve", "open", "socket", "ptrace", "fork", "clone3", "seccomp", "prctl", "pwrite64"] {
            #expect(run(f, nr: nr(forbidden)) == kill, "\(forbidden)")
        }
        #expect(run(f, nr: nr("openat")) == KILN_SECCOMP_RET_ERRNO | UInt32(EACCES))
    }

    @Test func anotherArchOrX32IsKilledInEveryMode() throws {
        for mode in [SeccompMode.kill, .trap, .log] {
            let f = try Filter(ThreadKind.vcpu.policy(), defaultAction: mode.defaultAction).instructions
            #expect(run(f, nr: nr("write"), arch: 0x4000_0003) == kill) // AUDIT_ARCH_I386
            #expect(run(f, nr: nr("write") | Int32(KILN_X32_SYSCALL_BIT)) == kill)
            #expect(run(f, nr: nr("getppid")) == mode.defaultAction)
        }
    }

    @Test func executableMappingsAreRefused() throws {
        for kind in ThreadKind.allCases {
            let f = try Filter(kind.policy(), defaultAction: kill).instructions
            let rw = constant("PROT_READ") | constant("PROT_WRITE"), rx = constant("PROT_READ") | constant("PROT_EXEC")
            #expect(run(f, nr: nr("mmap"), args: [0, 4096, rw]) == allow, "\(kind)")
            #expect(run(f, nr: nr("mmap"), args: [0, 4096, rx]) == kill, "\(kind)")
            #expect(run(f, nr: nr("mprotect"), args: [0, 4096, rx]) == kill, "\(kind)")
        }
    }

    @Test func devicesMayOpenUnixSocketsOnly() throws {
        let f = try Filter(ThreadKind.devices.policy(), defaultAction: kill).instructions
        #expect(run(f, nr: nr("socket"), args: [constant("AF_UNIX"), constant("SOCK_STREAM")]) == allow)
        #expect(run(f, nr: nr("socket"), args: [constant("AF_INET"), constant("SOCK_STREAM")]) == kill)
        #expect(run(f, nr: nr("socket"), args: [constant("AF_PACKET"), 3]) == kill)
        #expect(run(f, nr: nr("ioctl"), args: [3, constant("TUNSETIFF")]) == kill)
    }

    @Test func onlyTheKickSignalAndAbortMayBeSentToThreads() throws {
        let f = try Filter(ThreadKind.console.policy(), defaultAction: kill).instructions
        #expect(run(f, nr: nr("tgkill"), args: [1, 2, UInt64(kiln_sigrtmin_for_tests())]) == allow)
        #expect(run(f, nr: nr("tgkill"), args: [1, 2, UInt64(SIGABRT)]) == allow)
        #expect(run(f, nr: nr("tgkill"), args: [1, 2, UInt64(SIGKILL)]) == kill)
        #expect(run(f, nr: nr("kill")) == kill)
    }

    @Test func theServiceMayServeButNeitherExecNorMakeProcessesNorNamespaces() throws {
        let f = try Filter(ThreadKind.service.policy(), defaultAction: kill).instructions
        // Unix sockets only: the listener is bound before the filter, connections come from accept4.
        #expect(run(f, nr: nr("socket"), args: [constant("AF_UNIX"), constant("SOCK_STREAM")]) == allow)
        #expect(run(f, nr: nr("socket"), args: [constant("AF_INET6"), constant("SOCK_STREAM")]) == kill)
        #expect(run(f, nr: nr("socket"), args: [constant("AF_PACKET"), 3]) == kill)
        #expect(run(f, nr: nr("accept4")) == allow)
        #expect(run(f, nr: nr("pidfd_send_signal"), args: [5, UInt64(SIGKILL)]) == allow)
        #expect(run(f, nr: nr("pidfd_send_signal"), args: [5, UInt64(SIGSTOP)]) == kill)
        #expect(run(f, nr: nr("clone"), args: [constant("CLONE_THREAD") | 0x100 /* CLONE_VM */]) == allow)
        #expect(run(f, nr: nr("clone"), args: [0x1_0000_0000 | UInt64(SIGCHLD)]) == kill) // fork: no CLONE_THREAD
        #expect(run(f, nr: nr("clone3")) == KILN_SECCOMP_RET_ERRNO | UInt32(ENOSYS))
        for forbidden in ["execve", "execveat", "fork", "vfork", "mount", "umount2", "pivot_root", "unshare", "setns", "ptrace",
                          "init_module", "finit_module", "setuid", "setresuid", "setgroups", "capset", "seccomp", "getppid"] {
            #expect(run(f, nr: nr(forbidden)) == kill, "\(forbidden)")
        }
        #expect(run(f, nr: nr("exit_group")) == allow)
    }

    @Test func policiesLongerThanOneJumpCompile() throws {
        // The arch and x32 kills sit beside their checks, so the filter's length is not bounded
        // by a jump's 255 instructions (the service policy is long).
        let names = syscallNumbers.filter { $0.value < 300 }.sorted { $0.value < $1.value }.map(\.key)
        let f = try Filter(Policy(parsing: names.joined(separator: "\n")), defaultAction: kill).instructions
        #expect(f.count > 512)
        #expect(run(f, nr: 299) == allow)
        #expect(run(f, nr: 300) == kill)
        #expect(run(f, nr: 299, arch: 0x4000_0003) == kill)
        #expect(run(f, nr: 299 | Int32(KILN_X32_SYSCALL_BIT)) == kill)
    }

    @Test func longRequestListsStillAssemble() throws {
        let many = (0..<300).map { "ioctl \($0)" }.joined(separator: "\n")
        #expect(throws: Filter.CompileError.self) { try Filter(Policy(parsing: many), defaultAction: kill) }
        let f = try Filter(Policy(parsing: (0..<200).map { "ioctl \($0)" }.joined(separator: "\n")), defaultAction: kill)
        #expect(run(f.instructions, nr: nr("ioctl"), args: [0, 199]) == allow)
        #expect(run(f.instructions, nr: nr("ioctl"), args: [0, 200]) == kill)
    }
}

func kiln_sigrtmin_for_tests() -> Int32 { Int32(policyConstants["SIGRTMIN"]!) }
