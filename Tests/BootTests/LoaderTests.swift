import GuestMemory
import KilnTestSupport
import Testing
@testable import Boot

@Suite struct LoaderTests {
    static let mib = 1 << 20
    let code = TinyKernels.printAndReset("ok")

    func memory(_ size: Int = 64 << 20) throws -> GuestMemory {
        try GuestMemory(layout: Layout.ramRegions(size: UInt64(size)).map { ($0.base, Int($0.size)) })
    }

    @Test func e820SkipsLegacyHoleAndMMIOHole() {
        #expect(E820Entry.map(ramRegions: Layout.ramRegions(size: 256 << 20)) == [
            E820Entry(0, 0x9FC00, .ram), E820Entry(0x9FC00, 0x400, .reserved), E820Entry(0x10_0000, (256 << 20) - 0x10_0000, .ram),
        ])
        let big = E820Entry.map(ramRegions: Layout.ramRegions(size: 5 << 30))
        #expect(big.last == E820Entry(1 << 32, 2 << 30, .ram))
        #expect(big[2] == E820Entry(0x10_0000, 0xC000_0000 - 0x10_0000, .ram))
    }

    @Test func pvhLoadWritesStartInfoAndEntersInProtectedMode() throws {
        let mem = try memory()
        let initrd = ByteImage([UInt8](repeating: 0xAB, count: 5000), name: "initrd")
        let loaded = try Loader.load(BootRequest(kernel: ByteImage(TinyKernels.elf(code: code)), initrd: initrd,
                                                 cmdline: "console=ttyS0"), into: mem)
        #expect(loaded.bootProtocol == .pvh)
        #expect(loaded.entry.mode == .protected32)
        #expect(loaded.entry.rip == TinyKernels.loadAddress)
        #expect(loaded.entry.rbx == Layout.pvhStartInfo)
        #expect(try mem.read(code.count, at: TinyKernels.loadAddress) == code)
        #expect(try mem.read(UInt32.self, at: Layout.pvhStartInfo) == 0x336E_C578)
        #expect(try mem.read(UInt32.self, at: Layout.pvhStartInfo + 12) == 1) // one module: the initrd
        #expect(try mem.read(UInt64.self, at: Layout.pvhStartInfo + 24) == Layout.cmdline)
        #expect(try mem.read(UInt32.self, at: Layout.pvhStartInfo + 48) == 3) // memmap entries
        let module = try mem.read(UInt64.self, at: Layout.pvhModules)
        #expect(module == loaded.initrd?.address)
        #expect(try mem.read(UInt64.self, at: Layout.pvhModules + 8) == 5000)
        #expect(try mem.read(5000, at: module) == [UInt8](repeating: 0xAB, count: 5000))
        #expect(module & 0xFFF == 0)
        #expect(module + 5000 <= 64 << 20)
        #expect(try mem.read(14, at: Layout.cmdline) == Array("console=ttyS0\0".utf8))
    }

    @Test func linux64LoadWritesZeroPageAndPageTables() throws {
        let mem = try memory()
        let loaded = try Loader.load(BootRequest(kernel: ByteImage(TinyKernels.elf(code: code)), cmdline: "quiet",
                                                 preferredProtocol: .linux64), into: mem)
        #expect(loaded.bootProtocol == .linux64)
        #expect(loaded.entry.mode == .long64)
        #expect(loaded.entry.rsi == Layout.zeroPage)
        #expect(loaded.entry.cr3 == Layout.pml4)
        let zp = Layout.zeroPage
        #expect(try mem.read(UInt16.self, at: zp + 0x1FE) == 0xAA55)
        #expect(try mem.read(UInt32.self, at: zp + 0x202) == 0x5372_6448)
        #expect(try mem.read(UInt8.self, at: zp + 0x210) == 0xFF)
        #expect(try mem.read(UInt32.self, at: zp + 0x228) == UInt32(Layout.cmdline))
        #expect(try mem.read(UInt8.self, at: zp + 0x1E8) == 3)
        // Third e820 entry: RAM from 1 MiB to the end of memory.
        #expect(try mem.read(UInt64.self, at: zp + 0x2D0 + 40) == 0x10_0000)
        #expect(try mem.read(UInt64.self, at: zp + 0x2D0 + 48) == (64 << 20) - 0x10_0000)
        #expect(try mem.read(UInt32.self, at: zp + 0x2D0 + 56) == 1)
        // Page tables: PML4[0] -> PDPT, PDPT[1] -> second PD, PD entries are 2 MiB identity pages.
        #expect(try mem.read(UInt64.self, at: Layout.pml4) == Layout.pdpt | 3)
        #expect(try mem.read(UInt64.self, at: Layout.pdpt + 8) == (Layout.pageDirectories + 0x1000) | 3)
        #expect(try mem.read(UInt64.self, at: Layout.pageDirectories + 8 * 5) == (5 << 21) | 0x83)
        #expect(try mem.read(UInt64.self, at: Layout.pageDirectories + 0x3000 + 8 * 511) == ((3 << 30) + (511 << 21)) | 0x83)
        // GDT: 64-bit code at the boot protocol's selector 0x10.
        #expect(try mem.read(UInt64.self, at: Layout.gdt + 0x10) == 0x00AF_9B00_0000_FFFF)
        #expect(try mem.read(UInt64.self, at: Layout.gdt + 0x18) == 0x00CF_9300_0000_FFFF)
    }

    @Test func bzImageLoadsAtPreferredAddressWithItsHeader() throws {
        let mem = try memory()
        let payload = TinyKernels.bzPayload(code: code)
        let image = TinyKernels.bzImage(payload: payload)
        let loaded = try Loader.load(BootRequest(kernel: ByteImage(image), cmdline: "x"), into: mem)
        #expect(loaded.format == .bzImage)
        #expect(loaded.entry.rip == 0x100_0000 + 0x200)
        #expect(try mem.read(payload.count, at: 0x100_0000) == payload)
        #expect(try mem.read(UInt16.self, at: Layout.zeroPage + 0x206) == 0x020F) // kept from the image
        #expect(try mem.read(UInt32.self, at: Layout.zeroPage + 0x238) == 1) // cmdline_size = our length
        #expect(throws: BootError.self) {
            _ = try Loader.load(BootRequest(kernel: ByteImage(image), cmdline: "x", preferredProtocol: .pvh), into: mem)
        }
    }

    @Test func refusesWhatDoesNotFit() throws {
        let mem = try memory(16 << 20) // the kernel loads at 16 MiB
        #expect(throws: BootError.self) {
            _ = try Loader.load(BootRequest(kernel: ByteImage(TinyKernels.elf(code: code)), cmdline: ""), into: mem)
        }
        let mem2 = try memory(18 << 20)
        let initrd = ByteImage([UInt8](repeating: 1, count: 4 << 20))
        #expect(throws: BootError.self) {
            _ = try Loader.load(BootRequest(kernel: ByteImage(TinyKernels.elf(code: code)), initrd: initrd, cmdline: ""), into: mem2)
        }
    }

    @Test func refusesLongCommandLineAndBadCPUCount() throws {
        let mem = try memory()
        let kernel = ByteImage(TinyKernels.elf(code: code))
        #expect(throws: BootError.cmdlineTooLong(length: 3000, max: 2048)) {
            _ = try Loader.load(BootRequest(kernel: kernel, cmdline: String(repeating: "a", count: 3000)), into: mem)
        }
        #expect(throws: BootError.self) { _ = try Loader.load(BootRequest(kernel: kernel, cmdline: "", cpus: 0), into: mem) }
        #expect(throws: BootError.self) { _ = try Loader.load(BootRequest(kernel: kernel, cmdline: "", cpus: 33), into: mem) }
    }

    @Test func refusesSegmentsOverBootStructuresAndUnknownFormats() throws {
        let mem = try memory()
        var low = TinyKernels.elf(code: code)
        low.replaceSubrange(64 + 24..<64 + 32, with: TinyKernels.le64(0x7000)) // p_paddr onto the zero page
        #expect(throws: BootError.self) { _ = try Loader.load(BootRequest(kernel: ByteImage(low), cmdline: ""), into: mem) }
        #expect(throws: BootError.self) {
            _ = try Loader.load(BootRequest(kernel: ByteImage([UInt8](repeating: 0x41, count: 4096)), cmdline: ""), into: mem)
        }
    }

    @Test func bzImageWithAnOverflowingLoadAddressIsRefused() throws {
        // Found by Fuzz/run.sh FuzzBoot: pref_address near 2^64 made load + init_size trap.
        let mem = try memory()
        var image = TinyKernels.bzImage(payload: TinyKernels.bzPayload(code: code))
        image.replaceSubrange(0x258..<0x260, with: TinyKernels.le64(0xFFFF_FFFF_FFFF_FF00))
        #expect(throws: BootError.malformed("preferred load address 0xffffffffffffff00 overflows")) {
            _ = try Loader.load(BootRequest(kernel: ByteImage(image), cmdline: ""), into: mem)
        }
    }

    @Test func elfSegmentEndingNearTheTopOfTheAddressSpaceIsRefused() throws {
        // Found by FuzzBoot: reporting the size of such a segment in MiB overflowed.
        let mem = try memory()
        var image = TinyKernels.elf(code: code)
        image.replaceSubrange(64 + 24..<64 + 32, with: TinyKernels.le64(UInt64.max - 0x10_0000)) // p_paddr
        #expect(throws: BootError.self) { _ = try Loader.load(BootRequest(kernel: ByteImage(image), cmdline: ""), into: mem) }
        #expect(Loader.mib(UInt64.max) == 1 << 44)
    }

    @Test func mpTableChecksumsAndEntries() {
        for cpus in [1, 2, 8, 32] {
            let table = MPTable.build(cpus: cpus, at: Layout.mpTable)
            #expect(Array(table[0..<4]) == Array("_MP_".utf8))
            #expect(table[0..<16].reduce(0, &+) == 0, "floating pointer checksum, \(cpus) CPUs")
            let config = Array(table[16...])
            #expect(Array(config[0..<4]) == Array("PCMP".utf8))
            let length = Int(config[4]) | Int(config[5]) << 8
            #expect(length == config.count)
            #expect(config.reduce(0, &+) == 0, "configuration table checksum, \(cpus) CPUs")
            let entries = Int(config[34]) | Int(config[35]) << 8
            #expect(entries == cpus + 1 + 1 + MPTable.irqLines + 2)
            #expect(table.count <= 0x400, "fits in the EBDA KiB")
            #expect(config[44] == 0 && config[44 + 3] == 0x03, "first processor entry is the enabled bootstrap CPU")
        }
    }

    @Test func segmentDescriptorsEncode() {
        #expect(Segment.code64(0x10).encoded == 0x00AF_9B00_0000_FFFF)
        #expect(Segment.code32(0x10).encoded == 0x00CF_9B00_0000_FFFF)
        #expect(Segment.data(0x18).encoded == 0x00CF_9300_0000_FFFF)
        #expect(Segment.code64(0x10).byteLimit == 0xFFFF_FFFF)
    }
}
