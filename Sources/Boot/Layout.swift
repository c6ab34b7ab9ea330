/// Where Kiln puts things in guest-physical memory on x86-64. One place for every address.
public enum Layout {
    /// Global descriptor table used at entry (both protocols).
    public static let gdt: UInt64 = 0x500
    /// PVH `hvm_start_info`, its module list and its memory map.
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let pvhModules: UInt64 = 0x6040
    public static let pvhMemoryMap: UInt64 = 0x6080
    /// Linux `boot_params` (the "zero page").
    public static let zeroPage: UInt64 = 0x7000
    /// Initial stack pointer for the boot CPU.
    public static let bootStack: UInt64 = 0x8FF0
    /// Identity-mapping page tables: PML4, PDPT and four page directories (0-4 GiB in 2 MiB pages).
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    public static let pageDirectories: UInt64 = 0xB000
    /// Kernel command line.
    public static let cmdline: UInt64 = 0x20000
    public static let cmdlineMax = 0x10000
    /// MP floating pointer and configuration table, in the last KiB of base memory.
    public static let mpTable: UInt64 = 0x9FC00
    /// End of usable low memory (the EBDA and legacy areas follow).
    public static let lowMemoryEnd: UInt64 = 0x9FC00
    /// Start of memory above the legacy hole; kernels load at or above it.
    public static let highMemory: UInt64 = 0x10_0000
    /// Where a kernel without a preference is loaded (bzImage pref_address is usually the same).
    public static let defaultKernelLoad: UInt64 = 0x100_0000
    /// The 32-bit MMIO hole: no RAM between these addresses.
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000
    /// Pages KVM needs for the VT-x real-mode TSS and identity map (inside the hole).
    public static let kvmTSS: UInt64 = 0xFFFB_D000
    public static let kvmIdentityMap: UInt64 = 0xFFFB_C000
    /// virtio-mmio windows (4 KiB each) in the MMIO hole, and the first of their IRQ lines.
    public static let virtioMMIOBase: UInt64 = 0xD000_0000
    public static let virtioMMIOWindow: UInt64 = 0x1000
    public static let virtioFirstIRQ: UInt32 = 5
    public static let maxVirtioDevices = 16
    /// The in-kernel IOAPIC and the local APIC.
    public static let ioapic: UInt64 = 0xFEC0_0000
    public static let lapic: UInt64 = 0xFEE0_0000

    /// Guest RAM regions for `size` bytes of memory: below the MMIO hole, then above 4 GiB.
    public static func ramRegions(size: UInt64) -> [(base: UInt64, size: UInt64)] {
        if size <= mmioHoleStart { return [(0, size)] }
        return [(0, mmioHoleStart), (mmioHoleEnd, size - mmioHoleStart)]
    }
}
