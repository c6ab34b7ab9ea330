import GuestMemory

/// Identity page tables and the GDT for entry in long mode.
public enum PageTables {
    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    static let largePage: UInt64 = 1 << 7
    /// Mapped by the boot page tables: the kernel, boot_params, cmdline and initrd must lie below.
    public static let identityMappedLimit: UInt64 = 4 << 30

    /// Writes PML4 -> PDPT -> 4 page directories mapping guest-physical [0, 4 GiB) 1:1 with 2 MiB pages.
    public static func writeIdentityMap(_ memory: GuestMemory) throws(GuestMemoryError) {
        try memory.fill(0, count: 0x1000, at: Layout.pml4)
        try memory.fill(0, count: 0x1000, at: Layout.pdpt)
        try memory.write(Layout.pdpt | present | writable, at: Layout.pml4)
        for gib in 0..<4 {
            let pd = Layout.pageDirectories + UInt64(gib) * 0x1000
            try memory.write(pd | present | writable, at: Layout.pdpt + UInt64(gib) * 8)
            for i in 0..<512 {
                let address = (UInt64(gib) << 30) + (UInt64(i) << 21)
                try memory.write(address | present | writable | largePage, at: pd + UInt64(i) * 8)
            }
        }
    }

    /// GDT selectors follow the Linux boot protocol (__BOOT_CS 0x10, __BOOT_DS 0x18).
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// Writes a GDT holding null, null, code (64- or 32-bit), data and TSS descriptors.
    static func writeGDT(_ memory: GuestMemory, code: Segment, data: Segment, tss: Segment) throws(GuestMemoryError) -> UInt16 {
        let entries: [UInt64] = [0, 0, code.encoded, data.encoded, tss.encoded]
        for (i, e) in entries.enumerated() { try memory.write(e, at: Layout.gdt + UInt64(i) * 8) }
        return UInt16(entries.count * 8 - 1)
    }
}
