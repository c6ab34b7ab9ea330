import KVM

/// Shapes the CPUID a vCPU sees from what KVM supports, per host profile.
public enum CPUProfile {
    /// Features hidden on emulated-CPL0 hosts, matching the `clearcpuid=` the host profile passes
    /// (the instruction emulator lacks these). Leaf 1 ECX: PCID, POPCNT, XSAVE, OSXSAVE, AVX.
    static let emulatorLacksLeaf1ECX: UInt32 = 1 << 17 | 1 << 23 | 1 << 26 | 1 << 27 | 1 << 28
    /// Leaf 7 EBX: FSGSBASE, ERMS, INVPCID, SMAP; EDX: FSRM.
    static let emulatorLacksLeaf7EBX: UInt32 = 1 << 0 | 1 << 9 | 1 << 10 | 1 << 20
    static let emulatorLacksLeaf7EDX: UInt32 = 1 << 4

    /// Per-vCPU CPUID: APIC IDs, the hypervisor bit, leaf 0xB topology and the profile's hidden features.
    /// On emulated-CPL0 hosts the guest kernel still sees the physical CPUID (the emulator ignores
    /// KVM_SET_CPUID2), so the kernel command line does the hiding there; this keeps the two consistent.
    public static func entries(from supported: [CPUIDEntry], vcpu: UInt32, cpus: Int,
                               profile: HostProfile = .kvm) -> [CPUIDEntry] {
        supported.map { e in
            var e = e
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x00FF_FFFF) | (vcpu << 24) // initial APIC ID
                e.ebx = (e.ebx & 0xFF00_FFFF) | (UInt32(cpus) << 16) // logical processors
                e.ecx |= 1 << 31 // running under a hypervisor
            case 0xB:
                e.edx = vcpu // x2APIC ID
            default:
                break
            }
            if profile == .emulatedCPL0 {
                if e.function == 1 { e.ecx &= ~emulatorLacksLeaf1ECX }
                if e.function == 7 { e.ebx &= ~emulatorLacksLeaf7EBX; e.edx &= ~emulatorLacksLeaf7EDX }
            }
            return e
        }
    }
}
