import CKVM
import CLinux
import Glibc
import LinuxSys

/// One model-specific register and its value.
public struct MSR: Equatable, Sendable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) { self.index = index; self.value = value }
}

/// Everything KVM holds for one vCPU, as the raw UAPI structs (x86-64 layout), so a snapshot can
/// put it back. Optional parts are nil when this KVM lacks the capability.
public struct VCPUState: Sendable, Equatable {
    public var mpState: [UInt8]
    public var regs: [UInt8]
    public var sregs: [UInt8]
    /// struct kvm_fpu: always saved; struct kvm_xsave supersedes it where KVM_CAP_XSAVE works.
    public var fpu: [UInt8]
    public var xsave: [UInt8]?
    public var xcrs: [UInt8]?
    public var debugRegs: [UInt8]?
    public var lapic: [UInt8]
    public var msrs: [MSR]
    public var events: [UInt8]?

    public init(mpState: [UInt8], regs: [UInt8], sregs: [UInt8], fpu: [UInt8], xsave: [UInt8]?, xcrs: [UInt8]?,
                debugRegs: [UInt8]?, lapic: [UInt8], msrs: [MSR], events: [UInt8]?) {
        self.mpState = mpState; self.regs = regs; self.sregs = sregs; self.fpu = fpu; self.xsave = xsave
        self.xcrs = xcrs; self.debugRegs = debugRegs; self.lapic = lapic; self.msrs = msrs; self.events = events
    }
}

/// The VM-wide state: the three irqchips (PIC master, PIC slave, IOAPIC), the PIT and the KVM clock.
public struct VMState: Sendable, Equatable {
    public var picMaster: [UInt8]
    public var picSlave: [UInt8]
    public var ioapic: [UInt8]
    public var pit: [UInt8]
    public var clock: [UInt8]
    public init(picMaster: [UInt8], picSlave: [UInt8], ioapic: [UInt8], pit: [UInt8], clock: [UInt8]) {
        self.picMaster = picMaster; self.picSlave = picSlave; self.ioapic = ioapic; self.pit = pit; self.clock = clock
    }
}

/// What this KVM can save and restore, probed once from its capabilities.
public struct StateSupport: Sendable {
    public var xsave: Bool
    public var xcrs: Bool
    public var vcpuEvents: Bool
    public var debugRegs: Bool
    public init(_ system: KVMSystem) {
        xsave = system.checkExtension(KVM_CAP_XSAVE) > 0
        xcrs = system.checkExtension(KVM_CAP_XCRS) > 0
        vcpuEvents = system.checkExtension(KVM_CAP_VCPU_EVENTS) > 0
        debugRegs = system.checkExtension(KVM_CAP_DEBUGREGS) > 0
    }
}

/// Raw-struct ioctls: KVM_GET_* fills `size` bytes, KVM_SET_* reads them.
func getBytes(_ fd: Int32, _ name: String, _ request: UInt, size: Int, prefill: [UInt8] = []) throws(KVMError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    for (i, b) in prefill.enumerated() where i < size { bytes[i] = b }
    let rc = bytes.withUnsafeMutableBytes { kiln_ioctl_ptr(fd, request, $0.baseAddress) }
    if rc < 0 { throw .ioctl(name, Errno.current("ioctl")) }
    return bytes
}

func setBytes(_ fd: Int32, _ name: String, _ request: UInt, _ bytes: [UInt8], size: Int) throws(KVMError) {
    guard bytes.count == size else { throw .ioctl("\(name) (state is \(bytes.count) bytes, KVM wants \(size))", Errno(EINVAL)) }
    var copy = bytes
    let rc = copy.withUnsafeMutableBytes { kiln_ioctl_ptr(fd, request, $0.baseAddress) }
    if rc < 0 { throw .ioctl(name, Errno.current("ioctl")) }
}

extension KVMSystem {
    /// The MSRs this KVM saves and restores (KVM_GET_MSR_INDEX_LIST).
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity = 256
        while true {
            var buf = [UInt32](repeating: 0, count: capacity + 1)
            buf[0] = UInt32(capacity)
            let rc = buf.withUnsafeMutableBytes { kiln_ioctl_ptr(fd, KILN_KVM_GET_MSR_INDEX_LIST, $0.baseAddress) }
            if rc == 0 { return Array(buf[1..<(1 + Int(buf[0]))]) }
            guard errno == E2BIG, capacity < 16384 else { throw .ioctl("KVM_GET_MSR_INDEX_LIST", Errno.current("ioctl")) }
            capacity = Int(buf[0]) > capacity ? Int(buf[0]) : capacity * 2
        }
    }
}

extension VCPU {
    static let msrsHeader = MemoryLayout<kvm_msrs>.size
    static let msrEntry = MemoryLayout<kvm_msr_entry>.stride

    /// KVM_GET_MSRS for `indices`; returns how many leading entries KVM read.
    private func readMSRs(_ indices: ArraySlice<UInt32>) throws(KVMError) -> [MSR] {
        let count = indices.count
        let buf = UnsafeMutableRawPointer.allocate(byteCount: VCPU.msrsHeader + count * VCPU.msrEntry, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: VCPU.msrsHeader + count * VCPU.msrEntry)
        buf.storeBytes(of: UInt32(count), as: UInt32.self)
        for (i, index) in indices.enumerated() {
            (buf + VCPU.msrsHeader + i * VCPU.msrEntry).storeBytes(of: kvm_msr_entry(index: index, reserved: 0, data: 0), as: kvm_msr_entry.self)
        }
        let n = kiln_ioctl_ptr(fd, KILN_KVM_GET_MSRS, buf)
        if n < 0 { throw .ioctl("KVM_GET_MSRS", Errno.current("ioctl")) }
        return (0..<Int(n)).map { i in
            let e = (buf + VCPU.msrsHeader + i * VCPU.msrEntry).load(as: kvm_msr_entry.self)
            return MSR(index: e.index, value: e.data)
        }
    }

    /// Reads every MSR in `indices` that KVM will read (it stops at the first it refuses; that one is skipped).
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSR] {
        var out: [MSR] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let got = try readMSRs(rest)
            out += got
            rest = rest.dropFirst(got.count + 1)
        }
        return out
    }

    public func saveState(msrIndices: [UInt32], support: StateSupport) throws(KVMError) -> VCPUState {
        let mp = try getBytes(fd, "KVM_GET_MP_STATE", KILN_KVM_GET_MP_STATE, size: MemoryLayout<kvm_mp_state>.size)
        let regs = try getBytes(fd, "KVM_GET_REGS", KILN_KVM_GET_REGS, size: MemoryLayout<kvm_regs>.size)
        let sregs = try getBytes(fd, "KVM_GET_SREGS", KILN_KVM_GET_SREGS, size: MemoryLayout<kvm_sregs>.size)
        let fpu = try getBytes(fd, "KVM_GET_FPU", KILN_KVM_GET_FPU, size: MemoryLayout<kvm_fpu>.size)
        // XSAVE/XCRS may be reported yet refused (as on emulated-CPL0 hosts): then the FPU struct is the state.
        let xsave = support.xsave ? try? getBytes(fd, "KVM_GET_XSAVE", KILN_KVM_GET_XSAVE, size: MemoryLayout<kvm_xsave>.size) : nil
        let xcrs = support.xcrs ? try? getBytes(fd, "KVM_GET_XCRS", KILN_KVM_GET_XCRS, size: MemoryLayout<kvm_xcrs>.size) : nil
        let debug = support.debugRegs ? try getBytes(fd, "KVM_GET_DEBUGREGS", KILN_KVM_GET_DEBUGREGS, size: MemoryLayout<kvm_debugregs>.size) : nil
        let lapic = try getBytes(fd, "KVM_GET_LAPIC", KILN_KVM_GET_LAPIC, size: MemoryLayout<kvm_lapic_state>.size)
        let msrs = try msrs(msrIndices)
        let events = support.vcpuEvents ? try getBytes(fd, "KVM_GET_VCPU_EVENTS", KILN_KVM_GET_VCPU_EVENTS, size: MemoryLayout<kvm_vcpu_events>.size) : nil
        return VCPUState(mpState: mp, regs: regs, sregs: sregs, fpu: fpu, xsave: xsave, xcrs: xcrs, debugRegs: debug,
                         lapic: lapic, msrs: msrs, events: events)
    }

    /// Puts a saved state back, in the order KVM needs (LAPIC before MSRs such as TSC_DEADLINE; events last).
    public func restoreState(_ s: VCPUState) throws(KVMError) {
        try setBytes(fd, "KVM_SET_MP_STATE", KILN_KVM_SET_MP_STATE, s.mpState, size: MemoryLayout<kvm_mp_state>.size)
        try setBytes(fd, "KVM_SET_REGS", KILN_KVM_SET_REGS, s.regs, size: MemoryLayout<kvm_regs>.size)
        try setBytes(fd, "KVM_SET_SREGS", KILN_KVM_SET_SREGS, s.sregs, size: MemoryLayout<kvm_sregs>.size)
        if let xsave = s.xsave {
            try setBytes(fd, "KVM_SET_XSAVE", KILN_KVM_SET_XSAVE, xsave, size: MemoryLayout<kvm_xsave>.size)
        } else {
            try setBytes(fd, "KVM_SET_FPU", KILN_KVM_SET_FPU, s.fpu, size: MemoryLayout<kvm_fpu>.size)
        }
        if let xcrs = s.xcrs { try setBytes(fd, "KVM_SET_XCRS", KILN_KVM_SET_XCRS, xcrs, size: MemoryLayout<kvm_xcrs>.size) }
        if let d = s.debugRegs { try setBytes(fd, "KVM_SET_DEBUGREGS", KILN_KVM_SET_DEBUGREGS, d, size: MemoryLayout<kvm_debugregs>.size) }
        try setBytes(fd, "KVM_SET_LAPIC", KILN_KVM_SET_LAPIC, s.lapic, size: MemoryLayout<kvm_lapic_state>.size)
        try setMSRs(s.msrs.map { ($0.index, $0.value) })
        if let e = s.events { try setBytes(fd, "KVM_SET_VCPU_EVENTS", KILN_KVM_SET_VCPU_EVENTS, e, size: MemoryLayout<kvm_vcpu_events>.size) }
    }
}

extension VirtualMachine {
    static let irqchipSize = MemoryLayout<kvm_irqchip>.size

    private func irqchip(_ id: UInt32) throws(KVMError) -> [UInt8] {
        try getBytes(fd, "KVM_GET_IRQCHIP(\(id))", KILN_KVM_GET_IRQCHIP, size: VirtualMachine.irqchipSize,
                     prefill: withUnsafeBytes(of: id.littleEndian) { Array($0) })
    }

    public func saveState() throws(KVMError) -> VMState {
        VMState(picMaster: try irqchip(UInt32(KVM_IRQCHIP_PIC_MASTER)), picSlave: try irqchip(UInt32(KVM_IRQCHIP_PIC_SLAVE)),
                ioapic: try irqchip(UInt32(KVM_IRQCHIP_IOAPIC)),
                pit: try getBytes(fd, "KVM_GET_PIT2", KILN_KVM_GET_PIT2, size: MemoryLayout<kvm_pit_state2>.size),
                clock: try getBytes(fd, "KVM_GET_CLOCK", KILN_KVM_GET_CLOCK, size: MemoryLayout<kvm_clock_data>.size))
    }

    public func restoreState(_ s: VMState) throws(KVMError) {
        for (name, chip) in [("PIC master", s.picMaster), ("PIC slave", s.picSlave), ("IOAPIC", s.ioapic)] {
            try setBytes(fd, "KVM_SET_IRQCHIP (\(name))", KILN_KVM_SET_IRQCHIP, chip, size: VirtualMachine.irqchipSize)
        }
        try setBytes(fd, "KVM_SET_PIT2", KILN_KVM_SET_PIT2, s.pit, size: MemoryLayout<kvm_pit_state2>.size)
        // Only the clock value is restored: KVM_SET_CLOCK refuses the TSC_STABLE/HOST_TSC flags GET reports.
        var clock = s.clock
        let flagsOffset = 8 // struct kvm_clock_data { __u64 clock; __u32 flags; ... }
        for i in flagsOffset..<(flagsOffset + 4) where i < clock.count { clock[i] = 0 }
        try setBytes(fd, "KVM_SET_CLOCK", KILN_KVM_SET_CLOCK, clock, size: MemoryLayout<kvm_clock_data>.size)
    }
}
