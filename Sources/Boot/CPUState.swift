/// A segment as the CPU caches it; `encoded` is its 8-byte GDT descriptor.
public struct Segment: Equatable, Sendable {
    public let selector: UInt16
    public let base: UInt32
    public let limit: UInt32 // 20-bit raw limit; scaled by 4 KiB when `granularity`
    public let type: UInt8
    public let system: Bool // S bit: code/data (true) or system (TSS)
    public let dpl: UInt8
    public let present: Bool
    public let long: Bool
    public let defaultSize32: Bool
    public let granularity: Bool

    public var encoded: UInt64 {
        var d = UInt64(limit & 0xFFFF)
        d |= UInt64(base & 0xFF_FFFF) << 16
        d |= UInt64(type & 0xF) << 40
        d |= (system ? 1 : 0) << 44
        d |= UInt64(dpl & 3) << 45
        d |= (present ? 1 : 0) << 47
        d |= UInt64((limit >> 16) & 0xF) << 48
        d |= (long ? 1 : 0) << 53
        d |= (defaultSize32 ? 1 : 0) << 54
        d |= (granularity ? 1 : 0) << 55
        d |= UInt64(base >> 24) << 56
        return d
    }

    /// Limit in bytes minus one, as KVM's segment registers take it.
    public var byteLimit: UInt32 { granularity ? (limit << 12) | 0xFFF : limit }

    static func code64(_ selector: UInt16) -> Segment {
        Segment(selector: selector, base: 0, limit: 0xFFFFF, type: 0xB, system: true, dpl: 0, present: true,
                long: true, defaultSize32: false, granularity: true)
    }
    static func code32(_ selector: UInt16) -> Segment {
        Segment(selector: selector, base: 0, limit: 0xFFFFF, type: 0xB, system: true, dpl: 0, present: true,
                long: false, defaultSize32: true, granularity: true)
    }
    static func data(_ selector: UInt16) -> Segment {
        Segment(selector: selector, base: 0, limit: 0xFFFFF, type: 0x3, system: true, dpl: 0, present: true,
                long: false, defaultSize32: true, granularity: true)
    }
    static func tss(_ selector: UInt16) -> Segment {
        Segment(selector: selector, base: 0, limit: 0x67, type: 0xB, system: false, dpl: 0, present: true,
                long: false, defaultSize32: false, granularity: false)
    }
}

/// The boot CPU's state at the kernel's entry point, independent of KVM's structures.
public struct CPUEntryState: Equatable, Sendable {
    public enum Mode: Sendable { case long64, protected32 }
    public let mode: Mode
    public let rip: UInt64
    public let rsp: UInt64
    public let rsi: UInt64 // 64-bit boot protocol: boot_params
    public let rbx: UInt64 // PVH: hvm_start_info
    public let cr0: UInt64
    public let cr3: UInt64
    public let cr4: UInt64
    public let efer: UInt64
    public let gdtBase: UInt64
    public let gdtLimit: UInt16
    public let code: Segment
    public let data: Segment
    public let tss: Segment
}

enum ControlBits {
    static let cr0PE: UInt64 = 1 << 0
    static let cr0ET: UInt64 = 1 << 4
    static let cr0PG: UInt64 = 1 << 31
    static let cr4PAE: UInt64 = 1 << 5
    static let eferLME: UInt64 = 1 << 8
    static let eferLMA: UInt64 = 1 << 10
}
