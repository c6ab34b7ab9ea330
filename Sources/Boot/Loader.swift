import GuestMemory

/// Which entry protocol starts the kernel.
public enum BootProtocol: String, Sendable, CaseIterable {
    /// `vmlinux` entered in 32-bit protected mode at its Xen PVH note's address.
    case pvh
    /// `vmlinux` or `bzImage` entered in long mode with boot_params (Linux 64-bit boot protocol).
    case linux64
}

/// What to boot.
public struct BootRequest: Sendable {
    public var kernel: ImageSource
    public var initrd: ImageSource?
    public var cmdline: String
    public var cpus: Int
    /// nil: PVH when the ELF kernel has the note, else the 64-bit protocol.
    public var preferredProtocol: BootProtocol?

    public init(kernel: ImageSource, initrd: ImageSource? = nil, cmdline: String, cpus: Int = 1,
                preferredProtocol: BootProtocol? = nil) {
        self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline; self.cpus = cpus
        self.preferredProtocol = preferredProtocol
    }
}

/// What loading produced: the boot CPU's entry state and facts for diagnostics.
public struct LoadedKernel: Equatable, Sendable {
    public enum Format: String, Sendable { case elf = "ELF vmlinux", bzImage }
    public let format: Format
    public let bootProtocol: BootProtocol
    public let entry: CPUEntryState
    public let kernelEnd: UInt64
    public let initrd: (address: UInt64, size: UInt64)?

    public static func == (a: LoadedKernel, b: LoadedKernel) -> Bool {
        a.format == b.format && a.bootProtocol == b.bootProtocol && a.entry == b.entry && a.kernelEnd == b.kernelEnd
            && a.initrd?.address == b.initrd?.address && a.initrd?.size == b.initrd?.size
    }
}

public enum Loader {
    /// The most CPUs the MP table in the EBDA has room for.
    public static let maxCPUs = 32
    /// Linux's x86 COMMAND_LINE_SIZE when the kernel does not say (vmlinux, PVH).
    static let defaultCmdlineSize = 2048

    /// Loads the kernel and initrd into `memory` and writes every structure the protocol needs.
    public static func load(_ request: BootRequest, into memory: GuestMemory) throws(BootError) -> LoadedKernel {
        guard (1...maxCPUs).contains(request.cpus) else { throw .unsupported("\(request.cpus) vCPUs (1-\(maxCPUs) supported)") }
        let ram = memory.regions.map { (base: $0.guestBase, size: UInt64($0.size)) }
        let lowRAMEnd = ram.first { $0.base == 0 }.map { $0.base + $0.size } ?? 0
        let e820 = E820Entry.map(ramRegions: ram)

        let format: LoadedKernel.Format
        let proto: BootProtocol
        let kernelEnd: UInt64
        var rip: UInt64
        var zeroPage = ZeroPage()
        var cmdlineLimit = defaultCmdlineSize
        var initrdMax: UInt64 = 0x7FFF_FFFF

        if ELFKernel.isELF(request.kernel) {
            let elf = try ELFKernel.parse(request.kernel)
            format = .elf
            for s in elf.segments {
                guard s.physicalAddress >= Layout.highMemory else {
                    throw .malformed("segment at 0x\(String(s.physicalAddress, radix: 16)) overlaps Kiln's boot structures below 1 MiB")
                }
                guard s.physicalAddress + s.memorySize <= lowRAMEnd else {
                    throw .doesNotFit("kernel needs memory up to \(mib(s.physicalAddress + s.memorySize)) MiB, guest has \(mib(lowRAMEnd)) MiB below the MMIO hole")
                }
                try request.kernel.copy(at: s.fileOffset, count: s.fileSize, into: memory, address: s.physicalAddress)
                let bss = s.memorySize - UInt64(s.fileSize)
                if bss > 0 {
                    do { try memory.fill(0, count: Int(bss), at: s.physicalAddress + UInt64(s.fileSize)) }
                    catch { throw .placing("kernel bss", error) }
                }
            }
            kernelEnd = elf.physicalEnd
            let wantPVH = request.preferredProtocol.map { $0 == .pvh } ?? (elf.pvhEntry != nil)
            if wantPVH {
                guard let pvh = elf.pvhEntry else { throw .unsupported("kernel has no PVH entry note (build with CONFIG_PVH=y)") }
                guard pvh < 1 << 32 else { throw .malformed("PVH entry 0x\(String(pvh, radix: 16)) is above 4 GiB") }
                proto = .pvh
                rip = pvh
            } else {
                proto = .linux64
                rip = elf.entry64
            }
        } else if BzImage.isBzImage(request.kernel) {
            let bz = try BzImage.parse(request.kernel)
            guard request.preferredProtocol != .pvh else { throw .unsupported("a bzImage has no PVH entry; boot its vmlinux for PVH") }
            format = .bzImage
            proto = .linux64
            var load = bz.preferredAddress
            if !bz.relocatable || load < Layout.highMemory { load = max(load, Layout.defaultKernelLoad) }
            let payload = request.kernel.size - bz.kernelOffset
            let (end, overflow) = load.addingReportingOverflow(UInt64(bz.initSize))
            guard !overflow else { throw .malformed("preferred load address 0x\(String(load, radix: 16)) overflows") }
            guard end <= lowRAMEnd else {
                throw .doesNotFit("kernel needs memory up to \(mib(end)) MiB, guest has \(mib(lowRAMEnd)) MiB below the MMIO hole")
            }
            try request.kernel.copy(at: bz.kernelOffset, count: payload, into: memory, address: load)
            kernelEnd = end
            rip = load + 0x200 // 64-bit entry: startup_64 of the decompressor
            zeroPage = ZeroPage(header: bz.header)
            if bz.version >= 0x0206, bz.cmdlineSize > 0 { cmdlineLimit = Int(min(bz.cmdlineSize, UInt32(Layout.cmdlineMax - 1))) + 1 }
            if bz.initrdAddressMax != 0 { initrdMax = UInt64(bz.initrdAddressMax) }
        } else {
            throw .notAKernel("\(request.kernel.name) is neither an ELF vmlinux nor a bzImage")
        }

        // Command line.
        let cmdline = Array(request.cmdline.utf8)
        guard cmdline.count < cmdlineLimit else { throw .cmdlineTooLong(length: cmdline.count, max: cmdlineLimit) }
        guard !cmdline.contains(0) else { throw .malformed("kernel command line contains a NUL byte") }
        do { try memory.write(cmdline + [0], at: Layout.cmdline) } catch { throw .placing("command line", error) }

        // Initrd: as high as allowed in low RAM, page aligned, above the kernel.
        var initrd: (address: UInt64, size: UInt64)?
        if let image = request.initrd {
            let size = UInt64(image.size)
            let top = min(lowRAMEnd, initrdMax + 1, PageTables.identityMappedLimit)
            guard size > 0 else { throw .malformed("initrd \(image.name) is empty") }
            guard top > size, (top - size) & ~0xFFF >= (kernelEnd + 0xFFF) & ~0xFFF else {
                throw .doesNotFit("kernel (\(mib(kernelEnd)) MiB) and initrd (\(mib(size)) MiB) do not fit in \(mib(lowRAMEnd)) MiB")
            }
            let address = (top - size) & ~0xFFF
            try image.copy(at: 0, count: image.size, into: memory, address: address)
            initrd = (address, size)
        }

        // Protocol structures and the entry state.
        let entry: CPUEntryState
        do {
            try MPTable.write(memory, cpus: request.cpus)
            switch proto {
            case .pvh:
                try PVHStartInfo.write(memory, cmdline: Layout.cmdline, initrd: initrd, e820: e820)
                let code = Segment.code32(PageTables.codeSelector)
                let data = Segment.data(PageTables.dataSelector)
                let tss = Segment.tss(PageTables.tssSelector)
                let limit = try PageTables.writeGDT(memory, code: code, data: data, tss: tss)
                entry = CPUEntryState(mode: .protected32, rip: rip, rsp: 0, rsi: 0, rbx: Layout.pvhStartInfo,
                                      cr0: ControlBits.cr0PE | ControlBits.cr0ET, cr3: 0, cr4: 0, efer: 0,
                                      gdtBase: Layout.gdt, gdtLimit: limit, code: code, data: data, tss: tss)
            case .linux64:
                try zeroPage.setLoaderFields(cmdline: Layout.cmdline, cmdlineSize: cmdline.count, initrd: initrd, e820: e820)
                try memory.write(zeroPage.bytes, at: Layout.zeroPage)
                try PageTables.writeIdentityMap(memory)
                let code = Segment.code64(PageTables.codeSelector)
                let data = Segment.data(PageTables.dataSelector)
                let tss = Segment.tss(PageTables.tssSelector)
                let limit = try PageTables.writeGDT(memory, code: code, data: data, tss: tss)
                entry = CPUEntryState(mode: .long64, rip: rip, rsp: Layout.bootStack, rsi: Layout.zeroPage, rbx: 0,
                                      cr0: ControlBits.cr0PE | ControlBits.cr0ET | ControlBits.cr0PG,
                                      cr3: Layout.pml4, cr4: ControlBits.cr4PAE,
                                      efer: ControlBits.eferLME | ControlBits.eferLMA,
                                      gdtBase: Layout.gdt, gdtLimit: limit, code: code, data: data, tss: tss)
            }
        } catch let error as GuestMemoryError {
            throw .doesNotFit("boot structures: \(error)")
        } catch let error as BootError {
            throw error
        } catch {
            throw .malformed("\(error)")
        }
        return LoadedKernel(format: format, bootProtocol: proto, entry: entry, kernelEnd: kernelEnd, initrd: initrd)
    }

    /// Bytes in MiB, rounded up (never overflows, even for addresses near 2^64).
    static func mib(_ bytes: UInt64) -> UInt64 { bytes >> 20 + (bytes & 0xF_FFFF == 0 ? 0 : 1) }
}
