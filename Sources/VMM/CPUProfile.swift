import KVM

/// Shapes the CPUID a vCPU sees from what KVM supports.
public enum CPUProfile {
    /// Per-vCPU CPUID: APIC IDs, the hypervisor bit, and leaf 0xB topology.
    public static func entries(from supported: [CPUIDEntry], vcpu: UInt32, cpus: Int) -> [CPUIDEntry] {
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
            return e
        }
    }
}
