/// The parts of an x86-64 `vmlinux` ELF that booting needs: loadable segments,
/// the 64-bit entry point and, if present, the PVH 32-bit entry from its Xen note.
public struct ELFKernel: Equatable, Sendable {
    public struct Segment: Equatable, Sendable {
        public let fileOffset: Int
        public let fileSize: Int
        public let physicalAddress: UInt64
        public let memorySize: UInt64
    }

    public let entry64: UInt64
    public let pvhEntry: UInt64?
    public let segments: [Segment]

    /// Lowest and highest guest-physical addresses the segments occupy.
    public var physicalStart: UInt64 { segments.map(\.physicalAddress).min() ?? 0 }
    public var physicalEnd: UInt64 { segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0 }

    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    /// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point.
    static let xenNotePhys32Entry: UInt32 = 18
    /// Refuse absurd headers before allocating anything for them.
    static let maxProgramHeaders = 128
    static let maxNoteBytes = 1 << 20

    public static func isELF(_ image: ImageSource) -> Bool {
        (try? image.bytes(at: 0, count: 4)) == [0x7F, 0x45, 0x4C, 0x46]
    }

    public static func parse(_ image: ImageSource) throws(BootError) -> ELFKernel {
        guard image.size >= 64 else { throw .truncated("ELF header needs 64 bytes, \(image.name) has \(image.size)") }
        let h = Bytes(data: try image.bytes(at: 0, count: 64), what: "ELF header")
        guard h.data[0..<4].elementsEqual([0x7F, 0x45, 0x4C, 0x46]) else { throw .notAKernel("no ELF magic") }
        guard h.data[4] == 2 else { throw .unsupported("32-bit ELF; Kiln boots 64-bit kernels") }
        guard h.data[5] == 1 else { throw .unsupported("big-endian ELF") }
        guard try h.le(18, UInt16.self) == 0x3E else { throw .unsupported("ELF is not for x86-64") }
        guard try h.le(16, UInt16.self) == 2 else { throw .unsupported("ELF is not an executable (ET_EXEC)") }

        let entry = try h.le(24, UInt64.self)
        let phoff = try h.le(32, UInt64.self)
        let phentsize = Int(try h.le(54, UInt16.self))
        let phnum = Int(try h.le(56, UInt16.self))
        guard phentsize >= 56 else { throw .malformed("program header entry size \(phentsize) < 56") }
        guard phnum > 0, phnum <= maxProgramHeaders else { throw .malformed("\(phnum) program headers") }
        guard phoff <= UInt64(Int.max / 2) else { throw .malformed("program header offset \(phoff)") }
        let table = Bytes(data: try image.bytes(at: Int(phoff), count: phnum * phentsize), what: "program header")

        var segments: [Segment] = []
        var pvh: UInt64?
        for i in 0..<phnum {
            let o = i * phentsize
            let type = try table.le(o, UInt32.self)
            let offset = try table.le(o + 8, UInt64.self)
            let paddr = try table.le(o + 24, UInt64.self)
            let filesz = try table.le(o + 32, UInt64.self)
            let memsz = try table.le(o + 40, UInt64.self)
            guard offset <= UInt64(image.size), filesz <= UInt64(image.size) - offset else {
                throw .truncated("segment \(i) (\(filesz) bytes at offset \(offset)) extends past the end of \(image.name)")
            }
            switch type {
            case ptLoad:
                guard filesz <= memsz else { throw .malformed("segment \(i) file size exceeds its memory size") }
                guard paddr <= UInt64.max - memsz, memsz < 1 << 40 else { throw .malformed("segment \(i) address overflows") }
                segments.append(Segment(fileOffset: Int(offset), fileSize: Int(filesz),
                                        physicalAddress: paddr, memorySize: memsz))
            case ptNote:
                guard filesz <= UInt64(maxNoteBytes) else { throw .malformed("note segment of \(filesz) bytes") }
                let notes = try image.bytes(at: Int(offset), count: Int(filesz))
                if let e = try pvhEntry(inNotes: notes) { pvh = e }
            default:
                continue
            }
        }
        guard !segments.isEmpty else { throw .malformed("no loadable segments") }
        return ELFKernel(entry64: entry, pvhEntry: pvh, segments: segments)
    }

    /// Walks ELF notes (4-byte aligned name and descriptor) looking for Xen's PVH entry.
    static func pvhEntry(inNotes data: [UInt8]) throws(BootError) -> UInt64? {
        let b = Bytes(data: data, what: "ELF note")
        var o = 0
        while o + 12 <= data.count {
            let namesz = Int(try b.le(o, UInt32.self))
            let descsz = Int(try b.le(o + 4, UInt32.self))
            let type = try b.le(o + 8, UInt32.self)
            let nameStart = o + 12
            let descStart = nameStart + ((namesz + 3) & ~3)
            let next = descStart + ((descsz + 3) & ~3)
            guard namesz <= data.count, descsz <= data.count, next <= data.count else {
                throw .malformed("ELF note at \(o) runs past its segment")
            }
            let name = data[nameStart..<nameStart + namesz].prefix { $0 != 0 }
            if name.elementsEqual("Xen".utf8), type == xenNotePhys32Entry {
                switch descsz {
                case 4: return UInt64(try b.le(descStart, UInt32.self))
                case 8: return try b.le(descStart, UInt64.self)
                default: throw .malformed("PVH entry note has a \(descsz)-byte descriptor")
                }
            }
            o = next
        }
        return nil
    }
}
