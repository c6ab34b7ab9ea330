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

    /// Kernel parameters this host needs, appended to the command line.
    public var kernelParameters: [String] {
        switch self {
        case .kvm: return []
        case .emulatedCPL0:
            // The emulator lacks xsave/xrstor, popcnt, clac/stac and fsgsbase, and runs the
            // fast-string (erms/fsrm) `rep movsb` copies slowly; CPUID still advertises them all.
            // Only the last clearcpuid= counts, so every flag goes in this one.
            return ["kiln_emulated_cpl0", "clearcpuid=xsave,popcnt,smap,fsgsbase,erms,fsrm", "noinvpcid", "nopcid"]
        }
    }
}
