import CKVM

/// One CPUID leaf/subleaf as KVM exchanges it (struct kvm_cpuid_entry2).
public struct CPUIDEntry: Equatable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    static let headerSize = MemoryLayout<kvm_cpuid2>.size
    static let entrySize = MemoryLayout<kvm_cpuid_entry2>.stride

    /// Runs `body` with a zeroed struct kvm_cpuid2 holding room for `count` entries.
    static func withKVMBuffer<R, E: Error>(count: Int, entries: [CPUIDEntry] = [],
                                            _ body: (UnsafeMutableRawPointer) throws(E) -> R) throws(E) -> R {
        let size = headerSize + count * entrySize
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        buf.storeBytes(of: UInt32(entries.isEmpty ? count : entries.count), as: UInt32.self)
        for (i, e) in entries.enumerated() {
            var raw = kvm_cpuid_entry2()
            raw.function = e.function; raw.index = e.index; raw.flags = e.flags
            raw.eax = e.eax; raw.ebx = e.ebx; raw.ecx = e.ecx; raw.edx = e.edx
            (buf + headerSize + i * entrySize).storeBytes(of: raw, as: kvm_cpuid_entry2.self)
        }
        return try body(buf)
    }

    static func decode(_ buf: UnsafeMutableRawPointer) -> [CPUIDEntry] {
        let n = Int(buf.load(as: UInt32.self))
        return (0..<n).map { i in
            let raw = (buf + headerSize + i * entrySize).load(as: kvm_cpuid_entry2.self)
            return CPUIDEntry(function: raw.function, index: raw.index, flags: raw.flags,
                              eax: raw.eax, ebx: raw.ebx, ecx: raw.ecx, edx: raw.edx)
        }
    }
}
