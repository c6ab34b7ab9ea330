import Boot
import CKVM
import KVM

/// Puts a vCPU into the state a boot protocol requires.
enum VCPUSetup {
    static let msrSysenterCS: UInt32 = 0x174, msrSysenterESP: UInt32 = 0x175, msrSysenterEIP: UInt32 = 0x176
    static let msrSTAR: UInt32 = 0xC000_0081, msrLSTAR: UInt32 = 0xC000_0082, msrCSTAR: UInt32 = 0xC000_0083
    static let msrSyscallMask: UInt32 = 0xC000_0084, msrKernelGSBase: UInt32 = 0xC000_0102
    static let msrTSC: UInt32 = 0x10, msrMiscEnable: UInt32 = 0x1A0
    static let miscEnableFastStrings: UInt64 = 1

    /// Common to every vCPU: CPUID, MSRs, FPU and the local APIC's LINT pins.
    static func configure(_ vcpu: VCPU, cpuid: [CPUIDEntry]) throws(KVMError) {
        try vcpu.setCPUID(cpuid)
        try vcpu.setMSRs([
            (msrSysenterCS, 0), (msrSysenterESP, 0), (msrSysenterEIP, 0),
            (msrSTAR, 0), (msrCSTAR, 0), (msrKernelGSBase, 0), (msrSyscallMask, 0), (msrLSTAR, 0),
            (msrTSC, 0), (msrMiscEnable, miscEnableFastStrings),
        ])
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
        var lapic = try vcpu.lapic()
        setLVT(&lapic, offset: 0x350, deliveryMode: 0x7) // LINT0: ExtINT (the PIC)
        setLVT(&lapic, offset: 0x360, deliveryMode: 0x4) // LINT1: NMI
        try vcpu.setLAPIC(lapic)
    }

    static func setLVT(_ lapic: inout kvm_lapic_state, offset: Int, deliveryMode: UInt32) {
        withUnsafeMutableBytes(of: &lapic.regs) { raw in
            let old = raw.load(fromByteOffset: offset, as: UInt32.self)
            raw.storeBytes(of: (old & ~0x700) | (deliveryMode << 8), toByteOffset: offset, as: UInt32.self)
        }
    }

    /// The boot CPU's registers at the kernel entry point.
    static func enter(_ vcpu: VCPU, _ entry: CPUEntryState) throws(KVMError) {
        var sregs = try vcpu.specialRegisters()
        let code = segment(entry.code), data = segment(entry.data)
        sregs.cs = code
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        sregs.tr = segment(entry.tss)
        sregs.gdt.base = entry.gdtBase
        sregs.gdt.limit = entry.gdtLimit
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr0 = entry.cr0
        sregs.cr3 = entry.cr3
        sregs.cr4 = entry.cr4
        sregs.efer = entry.efer
        try vcpu.setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = entry.rip
        regs.rsp = entry.rsp
        regs.rbp = entry.rsp
        regs.rsi = entry.rsi
        regs.rbx = entry.rbx
        try vcpu.setRegisters(regs)
    }

    static func segment(_ s: Segment) -> kvm_segment {
        var k = kvm_segment()
        k.base = UInt64(s.base)
        k.limit = s.byteLimit
        k.selector = s.selector
        k.type = s.type
        k.present = s.present ? 1 : 0
        k.dpl = s.dpl
        k.db = s.defaultSize32 ? 1 : 0
        k.s = s.system ? 1 : 0
        k.l = s.long ? 1 : 0
        k.g = s.granularity ? 1 : 0
        return k
    }
}
