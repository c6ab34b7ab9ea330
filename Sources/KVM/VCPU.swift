import CKVM
import CLinux
import Glibc
import LinuxSys

/// A KVM virtual CPU and its shared run area. Owned by the thread that runs it.
public final class VCPU: @unchecked Sendable {
    let fd: Int32
    public let id: UInt32
    let run: UnsafeMutableRawPointer
    let mapSize: Int

    init(fd: Int32, id: UInt32, mapSize: Int) throws(KVMError) {
        let p = mmap(nil, mapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = Errno.current("mmap")
            Glibc.close(fd)
            throw .ioctl("mmap of the vCPU run area", e)
        }
        self.fd = fd
        self.id = id
        self.run = p
        self.mapSize = mapSize
    }

    deinit {
        munmap(run, mapSize)
        Glibc.close(fd)
    }

    private func check(_ name: String, _ rc: Int32) throws(KVMError) {
        if rc < 0 { throw .ioctl(name, Errno.current("ioctl")) }
    }

    /// Enters the guest until the next exit. A signal (see `requestExit`) yields `.interrupted`.
    public func runOnce() throws(KVMError) -> VMExit {
        if kiln_ioctl_int(fd, KILN_KVM_RUN, 0) < 0 {
            let e = errno
            if e == EINTR || e == EAGAIN {
                run.assumingMemoryBound(to: kvm_run.self).pointee.immediate_exit = 0
                return .interrupted
            }
            throw .ioctl("KVM_RUN", Errno(e, call: "ioctl"))
        }
        return VMExit.decode(run: run, size: mapSize)
    }

    /// Makes the next (or current, once kicked by a signal) KVM_RUN return at once.
    public func requestExit() {
        run.assumingMemoryBound(to: kvm_run.self).pointee.immediate_exit = 1
    }

    // MARK: registers

    /// KVM_GET_* into a fresh `T`.
    private func get<T: BitwiseCopyable>(_ name: String, _ request: UInt, _ empty: T) throws(KVMError) -> T {
        var value = empty
        try check(name, withUnsafeMutableBytes(of: &value) { kiln_ioctl_ptr(fd, request, $0.baseAddress) })
        return value
    }

    /// KVM_SET_* from `value`.
    private func set<T: BitwiseCopyable>(_ name: String, _ request: UInt, _ value: T) throws(KVMError) {
        var value = value
        try check(name, withUnsafeMutableBytes(of: &value) { kiln_ioctl_ptr(fd, request, $0.baseAddress) })
    }

    public func registers() throws(KVMError) -> kvm_regs { try get("KVM_GET_REGS", KILN_KVM_GET_REGS, kvm_regs()) }
    public func setRegisters(_ regs: kvm_regs) throws(KVMError) { try set("KVM_SET_REGS", KILN_KVM_SET_REGS, regs) }

    public func specialRegisters() throws(KVMError) -> kvm_sregs {
        try get("KVM_GET_SREGS", KILN_KVM_GET_SREGS, kvm_sregs())
    }
    public func setSpecialRegisters(_ sregs: kvm_sregs) throws(KVMError) {
        try set("KVM_SET_SREGS", KILN_KVM_SET_SREGS, sregs)
    }

    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) { try set("KVM_SET_FPU", KILN_KVM_SET_FPU, fpu) }

    public func lapic() throws(KVMError) -> kvm_lapic_state { try get("KVM_GET_LAPIC", KILN_KVM_GET_LAPIC, kvm_lapic_state()) }
    public func setLAPIC(_ state: kvm_lapic_state) throws(KVMError) { try set("KVM_SET_LAPIC", KILN_KVM_SET_LAPIC, state) }

    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        try CPUIDEntry.withKVMBuffer(count: entries.count, entries: entries) { (buf) throws(KVMError) in
            try check("KVM_SET_CPUID2", kiln_ioctl_ptr(fd, KILN_KVM_SET_CPUID2, buf))
        }
    }

    /// Writes model-specific registers; fails if KVM accepted fewer than given.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        let header = MemoryLayout<kvm_msrs>.size
        let entry = MemoryLayout<kvm_msr_entry>.stride
        let buf = UnsafeMutableRawPointer.allocate(byteCount: header + msrs.count * entry, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: header + msrs.count * entry)
        buf.storeBytes(of: UInt32(msrs.count), as: UInt32.self)
        for (i, m) in msrs.enumerated() {
            (buf + header + i * entry).storeBytes(of: kvm_msr_entry(index: m.index, reserved: 0, data: m.value),
                                                  as: kvm_msr_entry.self)
        }
        let n = kiln_ioctl_ptr(fd, KILN_KVM_SET_MSRS, buf)
        try check("KVM_SET_MSRS", n)
        if Int(n) != msrs.count {
            let failed = msrs[Int(n)].index
            throw .ioctl("KVM_SET_MSRS (MSR 0x\(String(failed, radix: 16)))", Errno(EINVAL))
        }
    }
}
