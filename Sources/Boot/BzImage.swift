/// The Linux x86 boot protocol's setup header, as found in a bzImage at 0x1F1.
public struct BzImage: Equatable, Sendable {
    public let setupSectors: Int
    public let version: UInt16
    public let loadFlags: UInt8
    public let xloadFlags: UInt16
    public let relocatable: Bool
    public let kernelAlignment: UInt32
    public let initrdAddressMax: UInt32
    public let cmdlineSize: UInt32
    public let preferredAddress: UInt64
    public let initSize: UInt32
    /// The raw setup header, [0x1F1, end), to copy into boot_params.
    public let header: [UInt8]

    /// Offset in the file where the protected-mode (64-bit capable) kernel starts.
    public var kernelOffset: Int { (setupSectors + 1) * 512 }

    static let headerStart = 0x1F1
    static let magic: UInt32 = 0x5372_6448 // "HdrS"
    static let loadedHigh: UInt8 = 0x01
    static let xlfKernel64: UInt16 = 0x01

    public static func isBzImage(_ image: ImageSource) -> Bool {
        guard let b = try? image.bytes(at: 0x202, count: 4) else { return false }
        return b == [0x48, 0x64, 0x72, 0x53]
    }

    public static func parse(_ image: ImageSource) throws(BootError) -> BzImage {
        guard image.size >= 1024 else { throw .truncated("bzImage needs a 1 KiB boot sector and setup header, \(image.name) has \(image.size) bytes") }
        let b = Bytes(data: try image.bytes(at: 0, count: 1024), what: "setup header")
        guard try b.le(0x1FE, UInt16.self) == 0xAA55 else { throw .notAKernel("no boot sector signature 0xAA55") }
        guard try b.le(0x202, UInt32.self) == magic else { throw .notAKernel("no \"HdrS\" setup header") }
        let version = try b.le(0x206, UInt16.self)
        guard version >= 0x020C else {
            throw .unsupported("boot protocol \(version >> 8).\(version & 0xFF) has no 64-bit entry (needs 2.12)")
        }
        let xload = try b.le(0x236, UInt16.self)
        guard xload & xlfKernel64 != 0 else { throw .unsupported("kernel has no 64-bit entry point (XLF_KERNEL_64 clear)") }
        let loadFlags = try b.u8(0x211)
        guard loadFlags & loadedHigh != 0 else { throw .unsupported("zImage kernels (not loaded high) are not supported") }
        var sectors = Int(try b.u8(0x1F1))
        if sectors == 0 { sectors = 4 }
        let headerEnd = 0x202 + Int(try b.u8(0x201))
        guard headerEnd <= 1024 else { throw .malformed("setup header ends at \(headerEnd)") }
        let kernelOffset = (sectors + 1) * 512
        guard kernelOffset < image.size else {
            throw .truncated("protected-mode kernel should start at \(kernelOffset), file has \(image.size) bytes")
        }
        let initSize = try b.le(0x260, UInt32.self)
        let payload = image.size - kernelOffset
        guard Int(initSize) >= payload else { throw .malformed("init_size \(initSize) is smaller than the kernel (\(payload) bytes)") }
        return BzImage(
            setupSectors: sectors, version: version, loadFlags: loadFlags, xloadFlags: xload,
            relocatable: try b.u8(0x234) != 0,
            kernelAlignment: try b.le(0x230, UInt32.self),
            initrdAddressMax: try b.le(0x22C, UInt32.self),
            cmdlineSize: try b.le(0x238, UInt32.self),
            preferredAddress: try b.le(0x258, UInt64.self),
            initSize: initSize,
            header: Array(b.data[headerStart..<headerEnd]))
    }
}
