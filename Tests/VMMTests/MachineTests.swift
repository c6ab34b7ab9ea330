import Boot
import Glibc
import KVM
import KilnTestSupport
import LinuxSys
import Synchronization
import Testing
@testable import VMM

/// Writes `bytes` to a temporary file and returns its path.
func temporaryFile(_ bytes: [UInt8], name: String) -> String {
    let path = "/tmp/kiln-vmm-test-\(getpid())-\(name)"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return path
}

/// Boots `kernel` with the console on a pipe; returns how it ended and what it printed.
func boot(_ kernel: [UInt8], name: String, protocol proto: BootProtocolChoice = .auto) throws -> (MachineOutcome, String) {
    let path = temporaryFile(kernel, name: name)
    defer { unlink(path) }
    var fds: [Int32] = [0, 0]
    #expect(pipe(&fds) == 0)
    defer { close(fds[0]) }
    var config = MachineConfig(kernelPath: path, cmdline: "", memoryMiB: 64, consoleInput: nil, consoleOutput: fds[1])
    config.bootProtocol = proto.value
    let machine = try Machine(config)
    // run() confines its calling thread with the main seccomp policy: give it a thread of its
    // own rather than one of the test runner's.
    let result = Mutex<MachineOutcome?>(nil)
    try Thread.spawn(name: "test-run") { result.withLock { $0 = machine.run() } }.join()
    let outcome = try #require(result.withLock { $0 })
    close(fds[1])
    var buffer = [UInt8](repeating: 0, count: 65536)
    let n = read(fds[0], &buffer, buffer.count)
    return (outcome, String(decoding: buffer[0..<max(0, n)], as: UTF8.self))
}

enum BootProtocolChoice {
    case auto, pvh, linux64
    var value: Boot.BootProtocol? {
        switch self {
        case .auto: return nil
        case .pvh: return .pvh
        case .linux64: return .linux64
        }
    }
}


/// These run real guests on /dev/kvm: tiny hand-assembled kernels that take milliseconds.
@Suite(.serialized, .blocking) struct MachineTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    @Test func pvhGuestPrintsAndShutsDownCleanly() throws {
        let (outcome, output) = try boot(TinyKernels.elf(code: TinyKernels.printAndReset("pvh-ok\n")), name: "pvh")
        #expect(outcome == .guestShutdown)
        #expect(output == "pvh-ok\n")
    }

    @Test func linux64ProtocolGuestRunsInLongMode() throws {
        let (outcome, output) = try boot(TinyKernels.elf(code: TinyKernels.printAndReset("long-ok\n"), pvh: false),
                                         name: "long", protocol: .linux64)
        #expect(outcome == .guestShutdown)
        #expect(output == "long-ok\n")
    }

    @Test func bzImageGuestEntersAt64BitEntryPoint() throws {
        let image = TinyKernels.bzImage(payload: TinyKernels.bzPayload(code: TinyKernels.printAndReset("bz-ok\n")))
        let (outcome, output) = try boot(image, name: "bz")
        #expect(outcome == .guestShutdown)
        #expect(output == "bz-ok\n")
    }

    @Test func guestThatFaultsEndsWithADiagnostic() throws {
        let (outcome, _) = try boot(TinyKernels.elf(code: TinyKernels.tripleFault), name: "fault")
        guard case .failed(let reason) = outcome else { Issue.record("outcome \(outcome)"); return }
        #expect(reason.contains("RIP 0x"), "\(reason)")
        #expect(reason.contains("KVM_EXIT"), "\(reason)")
    }

    @Test func truncatedKernelIsRefusedBeforeBoot() {
        let image = TinyKernels.elf(code: TinyKernels.printAndReset("x"))
        let path = temporaryFile(Array(image.prefix(100)), name: "trunc")
        defer { unlink(path) }
        #expect {
            _ = try Machine(MachineConfig(kernelPath: path, memoryMiB: 64, consoleInput: nil))
        } throws: { error in
            "\(error)".contains("truncated")
        }
    }

    @Test func configurationErrorsAreClear() {
        #expect {
            _ = try Machine(MachineConfig(kernelPath: "/nonexistent/vmlinux", consoleInput: nil))
        } throws: { "\($0)" == "kernel /nonexistent/vmlinux not found" }
        #expect {
            _ = try Machine(MachineConfig(kernelPath: "/dev/null", memoryMiB: 8, consoleInput: nil))
        } throws: { "\($0)".contains("too little") }
        #expect {
            _ = try Machine(MachineConfig(kernelPath: "/dev/null", cpus: 0, consoleInput: nil))
        } throws: { "\($0)".contains("--cpus") }
    }
}

@Suite(.blocking) struct HostAndConsoleTests {
    @Test func hostProfileFollowsKvmPvmModule() throws {
        let dir = "/tmp/kiln-sysmodule-\(getpid())"
        mkdir(dir, 0o755)
        defer { rmdir(dir + "/kvm_pvm"); rmdir(dir) }
        #expect(HostProfile.detect(sysModule: dir) == .kvm)
        mkdir(dir + "/kvm_pvm", 0o755)
        #expect(HostProfile.detect(sysModule: dir) == .emulatedCPL0)
    }

    @Test func emulatedHostAddsItsKernelParametersOnly() {
        var config = MachineConfig(kernelPath: "k", cmdline: "console=ttyS0", hostProfile: .kvm)
        #expect(config.effectiveCmdline == "console=ttyS0")
        config.hostProfile = .emulatedCPL0
        #expect(config.effectiveCmdline.hasPrefix("console=ttyS0 kiln_emulated_cpl0 clearcpuid="))
    }

    @Test func panicBannerIsRecognisedAcrossWrites() {
        var watch = PanicWatch()
        for b in "[ 1.0] KKernel panic - not syncin".utf8 { watch.feed(b) }
        #expect(!watch.matched)
        for b in "g: Attempted to kill init!".utf8 { watch.feed(b) }
        #expect(watch.matched)
    }

    @Test func emulationFailureNamesTheInstructionBytes() {
        // flags=1, insn_size=2, bytes 0f 0b (ud2)
        let bytes = Diagnostics.instructionBytes(suberror: 1, data: [1, 0x0B_0F02, 0])
        #expect(bytes == [0x0F, 0x0B])
        #expect(Diagnostics.instructionBytes(suberror: 1, data: [0, 0x0B_0F02]) == nil)
        #expect(Diagnostics.instructionBytes(suberror: 2, data: [1, 0x0B_0F02]) == nil)
    }

    @Test func cpuidCarriesAPICIDAndHypervisorBit() {
        let supported: [KVM.CPUIDEntry] = [KVM.CPUIDEntry(function: 1, ebx: 0xAB00_0800, ecx: 0), KVM.CPUIDEntry(function: 0xB)]
        let e = CPUProfile.entries(from: supported, vcpu: 3, cpus: 4)
        #expect(e[0].ebx >> 24 == 3)
        #expect((e[0].ebx >> 16) & 0xFF == 4)
        #expect(e[0].ecx & (1 << 31) != 0)
        #expect(e[1].edx == 3)
    }

    @Test func emulatedHostProfileHidesWhatTheEmulatorLacks() {
        let supported = [KVM.CPUIDEntry(function: 1, ecx: 0x0C80_0000 | (1 << 17)), KVM.CPUIDEntry(function: 7, ebx: 0x0010_0601, edx: 0x10)]
        let kvm = CPUProfile.entries(from: supported, vcpu: 0, cpus: 1, profile: .kvm)
        #expect(kvm[0].ecx & 0x0C80_0000 == 0x0C80_0000, "real KVM keeps XSAVE and POPCNT")
        let emulated = CPUProfile.entries(from: supported, vcpu: 0, cpus: 1, profile: .emulatedCPL0)
        #expect(emulated[0].ecx & (0x0C80_0000 | 1 << 17) == 0)
        #expect(emulated[1].ebx == 0 && emulated[1].edx == 0)
    }
}
