import GuestMemory

/// Builds Linux's `struct boot_params` (the zero page) for the 64-bit boot protocol.
public struct ZeroPage: Equatable, Sendable {
    public private(set) var bytes = [UInt8](repeating: 0, count: 4096)

    // Offsets in struct boot_params (Documentation/arch/x86/zero-page.rst, boot.rst).
    static let extRamdiskImage = 0x0C0
    static let extRamdiskSize = 0x0C4
    static let extCmdLinePtr = 0x0C8
    static let e820Count = 0x1E8
    static let setupHeader = 0x1F1
    static let bootFlag = 0x1FE
    static let headerMagic = 0x202
    static let version = 0x206
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let cmdLinePtr = 0x228
    static let kernelAlignment = 0x230
    static let cmdlineSize = 0x238
    static let e820Table = 0x2D0
    public static let maxE820Entries = 128

    public init() {}

    /// Starts from a bzImage's own setup header (so fields the kernel set are kept).
    public init(header: [UInt8]) {
        bytes.replaceSubrange(Self.setupHeader..<Self.setupHeader + header.count, with: header)
    }

    mutating func put<T: FixedWidthInteger>(_ v: T, _ offset: Int) {
        bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: le(v))
    }

    public func get<T: FixedWidthInteger>(_: T.Type, _ offset: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
        return v
    }

    /// Fills the fields a boot loader owns: loader type, command line, initrd, memory map.
    public mutating func setLoaderFields(cmdline: UInt64, cmdlineSize: Int, initrd: (address: UInt64, size: UInt64)?,
                                         e820: [E820Entry]) throws(BootError) {
        guard e820.count <= Self.maxE820Entries else { throw .malformed("\(e820.count) e820 entries") }
        put(UInt16(0xAA55), Self.bootFlag)
        put(UInt32(0x5372_6448), Self.headerMagic)
        if get(UInt16.self, Self.version) == 0 { put(UInt16(0x020F), Self.version) }
        put(UInt8(0xFF), Self.typeOfLoader) // an undefined loader
        put(bytes[Self.loadFlags] | 0x01, Self.loadFlags) // LOADED_HIGH
        put(UInt32(truncatingIfNeeded: cmdline), Self.cmdLinePtr)
        put(UInt32(truncatingIfNeeded: cmdline >> 32), Self.extCmdLinePtr)
        put(UInt32(cmdlineSize), Self.cmdlineSize)
        if get(UInt32.self, Self.kernelAlignment) == 0 { put(UInt32(0x20_0000), Self.kernelAlignment) }
        if let initrd {
            put(UInt32(truncatingIfNeeded: initrd.address), Self.ramdiskImage)
            put(UInt32(truncatingIfNeeded: initrd.address >> 32), Self.extRamdiskImage)
            put(UInt32(truncatingIfNeeded: initrd.size), Self.ramdiskSize)
            put(UInt32(truncatingIfNeeded: initrd.size >> 32), Self.extRamdiskSize)
        }
        put(UInt8(e820.count), Self.e820Count)
        for (i, e) in e820.enumerated() {
            let o = Self.e820Table + i * 20
            put(e.address, o)
            put(e.size, o + 8)
            put(e.kind.rawValue, o + 16)
        }
    }
}

/// Builds the PVH `hvm_start_info`, module list and memory map (xen/include/public/arch-x86/hvm/start_info.h).
public enum PVHStartInfo {
    static let magic: UInt32 = 0x336E_C578

    public static func write(_ memory: GuestMemory, cmdline: UInt64, initrd: (address: UInt64, size: UInt64)?,
                             e820: [E820Entry]) throws(GuestMemoryError) {
        var info = le(magic) + le(UInt32(1)) + le(UInt32(0)) // magic, version 1, flags
        info += le(UInt32(initrd == nil ? 0 : 1))
        info += le(initrd == nil ? UInt64(0) : Layout.pvhModules)
        info += le(cmdline) + le(UInt64(0)) // cmdline, no RSDP
        info += le(Layout.pvhMemoryMap) + le(UInt32(e820.count)) + le(UInt32(0))
        try memory.write(info, at: Layout.pvhStartInfo)
        if let initrd {
            try memory.write(le(initrd.address) + le(initrd.size) + le(UInt64(0)) + le(UInt64(0)), at: Layout.pvhModules)
        }
        var map: [UInt8] = []
        for e in e820 { map += le(e.address) + le(e.size) + le(e.kind.rawValue) + le(UInt32(0)) }
        try memory.write(map, at: Layout.pvhMemoryMap)
    }
}
