import GuestMemory

/// The Intel MultiProcessor Specification 1.4 tables that tell Linux about CPUs,
/// the IOAPIC and ISA interrupt wiring when there is no ACPI.
public enum MPTable {
    static let lapicVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x11
    public static let irqLines = 24

    /// The floating pointer followed by the configuration table, as bytes.
    public static func build(cpus: Int, at address: UInt64) -> [UInt8] {
        let ioapicID = UInt8(cpus)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for cpu in 0..<cpus {
            var e: [UInt8] = [0, UInt8(cpu), lapicVersion, cpu == 0 ? 0x03 : 0x01] // enabled (+ bootstrap)
            e += le(UInt32(0x600)) // CPU signature: family 6
            e += le(UInt32(0x201)) // features: FPU, APIC
            e += [UInt8](repeating: 0, count: 8)
            entries += e; count += 1
        }
        entries += [1, 0] + Array("ISA   ".utf8); count += 1
        entries += [2, ioapicID, ioapicVersion, 1] + le(UInt32(Layout.ioapic)); count += 1
        for irq in 0..<irqLines {
            // I/O interrupt: INT, conforming polarity/trigger, ISA bus 0, IRQ n -> IOAPIC pin n.
            entries += [3, 0] + le(UInt16(0)) + [0, UInt8(irq), ioapicID, UInt8(irq)]; count += 1
        }
        // Local interrupts: ExtINT on LINT0, NMI on LINT1, all local APICs.
        entries += [4, 3] + le(UInt16(0)) + [0, 0, 0xFF, 0]; count += 1
        entries += [4, 1] + le(UInt16(0)) + [0, 0, 0xFF, 1]; count += 1

        let configAddress = address + 16
        var config: [UInt8] = Array("PCMP".utf8)
        config += le(UInt16(44 + entries.count)) + [4, 0] // length, spec 1.4, checksum
        config += Array("KILN    ".utf8) + Array("MICROVM     ".utf8)
        config += le(UInt32(0)) + le(UInt16(0)) + le(count) + le(UInt32(Layout.lapic))
        config += le(UInt16(0)) + [0, 0]
        config += entries
        config[7] = checksum(config)

        var floating: [UInt8] = Array("_MP_".utf8) + le(UInt32(configAddress))
        floating += [1, 4, 0, 0, 0, 0, 0, 0] // length 16 bytes, spec 1.4, checksum, features (table present)
        floating[10] = checksum(floating)
        return floating + config
    }

    public static func write(_ memory: GuestMemory, cpus: Int) throws(GuestMemoryError) {
        try memory.write(build(cpus: cpus, at: Layout.mpTable), at: Layout.mpTable)
    }

    /// The byte that makes the sum of `bytes` zero modulo 256.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}
