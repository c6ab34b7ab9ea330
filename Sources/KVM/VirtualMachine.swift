import CKVM
import CLinux
import Glibc
import LinuxSys

/// A KVM virtual machine: memory slots, the in-kernel interrupt controllers, vCPUs.
public final class VirtualMachine: @unchecked Sendable {
    let fd: Int32
    public let system: KVMSystem

    init(fd: Int32, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { Glibc.close(fd) }

    private func check(_ name: String, _ rc: Int32) throws(KVMError) {
        if rc < 0 { throw .ioctl(name, Errno.current("ioctl")) }
    }

    public func setMemoryRegion(slot: UInt32, guestBase: UInt64, size: Int, hostAddress: UInt64) throws(KVMError) {
        var region = kvm_userspace_memory_region(slot: slot, flags: 0, guest_phys_addr: guestBase,
                                                 memory_size: UInt64(size), userspace_addr: hostAddress)
        try check("KVM_SET_USER_MEMORY_REGION", kiln_ioctl_ptr(fd, KILN_KVM_SET_USER_MEMORY_REGION, &region))
    }

    /// The x86 TSS and identity-map pages KVM needs below 4 GiB (unused by PVM, required by VT-x).
    public func setSystemPages(tss: UInt64, identityMap: UInt64) throws(KVMError) {
        try check("KVM_SET_TSS_ADDR", kiln_ioctl_int(fd, KILN_KVM_SET_TSS_ADDR, UInt(tss)))
        var addr = identityMap
        try check("KVM_SET_IDENTITY_MAP_ADDR", kiln_ioctl_ptr(fd, KILN_KVM_SET_IDENTITY_MAP_ADDR, &addr))
    }

    /// The in-kernel PIC, IOAPIC and LAPICs, and the PIT.
    public func createInterruptControllers() throws(KVMError) {
        try check("KVM_CREATE_IRQCHIP", kiln_ioctl_int(fd, KILN_KVM_CREATE_IRQCHIP, 0))
        var pit = kvm_pit_config()
        pit.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try check("KVM_CREATE_PIT2", kiln_ioctl_ptr(fd, KILN_KVM_CREATE_PIT2, &pit))
    }

    public func createVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let raw = kiln_ioctl_int(fd, KILN_KVM_CREATE_VCPU, UInt(id))
        try check("KVM_CREATE_VCPU", raw)
        return try VCPU(fd: raw, id: id, mapSize: system.vcpuMapSize)
    }

    /// Sets an interrupt line's level (edge interrupts: 1 then 0).
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try check("KVM_IRQ_LINE", kiln_ioctl_ptr(fd, KILN_KVM_IRQ_LINE, &line))
    }

    /// Makes every write to `eventFD` inject interrupt `gsi` into the guest.
    public func registerIRQFD(_ eventFD: Int32, gsi: UInt32) throws(KVMError) {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(eventFD)
        irqfd.gsi = gsi
        try check("KVM_IRQFD", kiln_ioctl_ptr(fd, KILN_KVM_IRQFD, &irqfd))
    }
}

extension VirtualMachine {
    /// Makes guest writes of `value` (4 bytes) to MMIO `address` signal `eventFD` inside KVM,
    /// without an exit to Kiln: how queue notifications reach the device thread.
    public func registerIOEventFD(_ eventFD: Int32, mmioAddress: UInt64, value: UInt32) throws(KVMError) {
        var e = kvm_ioeventfd()
        e.datamatch = UInt64(value)
        e.addr = mmioAddress
        e.len = 4
        e.fd = eventFD
        e.flags = KILN_KVM_IOEVENTFD_FLAG_DATAMATCH
        if kiln_ioctl_ptr(fd, KILN_KVM_IOEVENTFD, &e) < 0 { throw .ioctl("KVM_IOEVENTFD", Errno.current("ioctl")) }
    }
}
