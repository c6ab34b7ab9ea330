import Glibc

/// What kind of KVM host Kiln runs on, and what that host needs from the guest.
public enum HostProfile: String, Sendable, CaseIterable {
    /// Hardware virtualization (VT-x/AMD-V): CPUID filtering works, no guest workarounds.
    case kvm
    /// A paravirtual KVM (kvm_pvm) whose guest kernel mode runs in an instruction emulator:
    /// CPUID cannot be filtered, so features are hidden on the kernel command line, and
    /// the Kiln kernel's `kiln_emulated_cpl0` workarounds are switched on.
    case emulatedCPL0 = "emulated-cpl0"

    /// Detects the profile: kvm_pvm loaded means guest CPL0 is emulated.
    public static func detect(sysModule: String = "/sys/module") -> HostProfile {
        access(sysModule + "/kvm_pvm", F_OK) == 0 ? .emulatedCPL0 : .kvm
    }

    /// Keeps glibc in the guest's user space off AVX, AVX-512 and the fast-string copies.
    public static let glibcTunables =
        "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX2,-AVX,-AVX_Fast_Unaligned_Load,-ERMS,-FSRM"

    /// Kernel parameters this host needs, appended to the command line.
    public var kernelParameters: [String] {
        switch self {
        case .kvm: return []
        case .emulatedCPL0:
            // The emulator lacks xsave/xrstor, popcnt, clac/stac and fsgsbase, and runs the
            // fast-string (erms/fsrm) `rep movsb` copies slowly; CPUID still advertises them all.
            // Only the last clearcpuid= counts, so every flag goes in this one.
            // With xsave hidden the guest kernel saves only the legacy SSE state when it switches
            // processes, yet guest user mode runs natively and its CPUID still offers AVX: glibc's
            // AVX/AVX-512 memcpy then loses register halves across context switches (measured:
            // 64-byte runs of corrupted data in 1 MiB piped through cat). The kernel hands this
            // parameter to init as an environment variable, and kiln-agent passes it on to every
            // process, so glibc in the guest keeps to SSE.
            return ["kiln_emulated_cpl0", "clearcpuid=xsave,popcnt,smap,fsgsbase,erms,fsrm", "noinvpcid", "nopcid",
                    HostProfile.glibcTunables]
        }
    }
}
