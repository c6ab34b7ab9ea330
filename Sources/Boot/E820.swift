/// One entry of the BIOS-style memory map handed to the kernel (e820 in the zero page, PVH memmap).
public struct E820Entry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2 }
    public let address: UInt64
    public let size: UInt64
    public let kind: Kind

    public init(_ address: UInt64, _ size: UInt64, _ kind: Kind) {
        self.address = address; self.size = size; self.kind = kind
    }

    /// The memory map for guest RAM laid out by `Layout.ramRegions`: low RAM up to the EBDA,
    /// the EBDA (where the MP table lives) reserved, then RAM from 1 MiB, skipping the MMIO hole.
    public static func map(ramRegions: [(base: UInt64, size: UInt64)]) -> [E820Entry] {
        var entries: [E820Entry] = [
            E820Entry(0, Layout.lowMemoryEnd, .ram),
            E820Entry(Layout.lowMemoryEnd, 0xA0000 - Layout.lowMemoryEnd, .reserved),
        ]
        for r in ramRegions {
            let start = max(r.base, Layout.highMemory)
            let end = r.base + r.size
            if end > start { entries.append(E820Entry(start, end - start, .ram)) }
        }
        return entries
    }
}
