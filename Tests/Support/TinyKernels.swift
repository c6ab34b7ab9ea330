/// Hand-assembled guest images for tests: a few instructions that use Kiln's devices,
/// wrapped as an ELF vmlinux (with or without the PVH note) or as a bzImage.
public enum TinyKernels {
    public static let loadAddress: UInt64 = 0x100_0000

    /// Prints `text` on COM1, then asks the i8042 for a reset. Valid in 32- and 64-bit mode.
    public static func printAndReset(_ text: String) -> [UInt8] {
        var code: [UInt8] = [0x66, 0xBA, 0xF8, 0x03] // mov dx, 0x3f8
        for b in text.utf8 { code += [0xB0, b, 0xEE] } // mov al, b; out dx, al
        code += [0xB0, 0xFE, 0xE6, 0x64] // mov al, 0xfe; out 0x64, al
        code += [0xF4, 0xEB, 0xFD] // hlt; jmp $-3
        return code
    }

    /// Executes `ud2`-free bytes the emulator may reject, then stops: for fault diagnostics.
    public static let tripleFault: [UInt8] = [0x0F, 0x0B] // ud2 with no IDT: #UD -> #DF -> triple fault

    /// An ELF64 x86-64 executable with one PT_LOAD at `loadAddress` and, if `pvh`, a Xen PVH note.
    public static func elf(code: [UInt8], pvh: Bool = true, bss: Int = 0x1000, entry: UInt64? = nil) -> [UInt8] {
        let headerSize = 64, phSize = 56
        let phnum = pvh ? 2 : 1
        let codeOffset = headerSize + phSize * phnum
        var note: [UInt8] = []
        if pvh { note = le32(4) + le32(4) + le32(18) + Array("Xen\0".utf8) + le32(UInt32(loadAddress)) }
        let noteOffset = codeOffset + code.count

        var out: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        out += le16(2) + le16(0x3E) + le32(1) + le64(entry ?? loadAddress) + le64(UInt64(headerSize)) + le64(0)
        out += le32(0) + le16(UInt16(headerSize)) + le16(UInt16(phSize)) + le16(UInt16(phnum)) + le16(0) + le16(0) + le16(0)
        out += le32(1) + le32(7) + le64(UInt64(codeOffset)) + le64(loadAddress) + le64(loadAddress)
        out += le64(UInt64(code.count)) + le64(UInt64(code.count + bss)) + le64(0x1000)
        if pvh {
            out += le32(4) + le32(4) + le64(UInt64(noteOffset)) + le64(0) + le64(0)
            out += le64(UInt64(note.count)) + le64(UInt64(note.count)) + le64(4)
        }
        return out + code + note
    }

    /// A bzImage: boot sector + setup header (protocol 2.15, 64-bit entry) and `payload`
    /// as the protected-mode kernel; the 64-bit entry is at payload offset 0x200.
    public static func bzImage(payload: [UInt8], setupSectors: UInt8 = 1, version: UInt16 = 0x020F,
                               xloadflags: UInt16 = 0x1, initSize: UInt32 = 0x40_0000) -> [UInt8] {
        var setup = [UInt8](repeating: 0, count: ((setupSectors == 0 ? 4 : Int(setupSectors)) + 1) * 512)
        func put(_ bytes: [UInt8], _ offset: Int) { setup.replaceSubrange(offset..<offset + bytes.count, with: bytes) }
        put([setupSectors], 0x1F1)
        put(le16(0xAA55), 0x1FE)
        put([0xEB, 0x66], 0x200) // jump over the header: header ends at 0x202 + 0x66
        put(Array("HdrS".utf8), 0x202)
        put(le16(version), 0x206)
        put([0x01], 0x211) // LOADED_HIGH
        put(le32(0x7FFF_FFFF), 0x22C) // initrd_addr_max
        put(le32(0x20_0000), 0x230) // kernel_alignment
        put([1], 0x234) // relocatable
        put(le16(xloadflags), 0x236)
        put(le32(2048), 0x238) // cmdline_size
        put(le64(0x100_0000), 0x258) // pref_address
        put(le32(initSize), 0x260)
        return setup + payload
    }

    /// A payload whose 64-bit entry (offset 0x200) runs `code`.
    public static func bzPayload(code: [UInt8]) -> [UInt8] {
        [UInt8](repeating: 0x90, count: 0x200) + code
    }

    public static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    public static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    public static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}
