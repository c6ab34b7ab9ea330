import CKVM
import CLinux
import Glibc
import LinuxSys

/// The capabilities Kiln relies on, checked once when /dev/kvm is opened.
public let requiredCapabilities: [(name: String, id: Int32)] = [
    ("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP),
    ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY),
    ("KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR),
    ("KVM_CAP_PIT2", KVM_CAP_PIT2),
    ("KVM_CAP_IRQFD", KVM_CAP_IRQFD),
    ("KVM_CAP_IOEVENTFD", KVM_CAP_IOEVENTFD),
    ("KVM_CAP_EXT_CPUID", KVM_CAP_EXT_CPUID),
    ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
]

/// An open /dev/kvm.
public final class KVMSystem: Sendable {
    let fd: Int32
    public let vcpuMapSize: Int

    public init(path: String = "/dev/kvm") throws(KVMError) {
        let raw = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if raw < 0 {
            let e = Errno.current("open")
            switch e.code {
            case ENOENT: throw .deviceMissing(path: path)
            case EACCES, EPERM: throw .permissionDenied(path: path)
            default: throw .openFailed(path: path, e)
            }
        }
        fd = raw
        let version = kiln_ioctl_int(fd, KILN_KVM_GET_API_VERSION, 0)
        guard version == KVM_API_VERSION else {
            Glibc.close(raw)
            throw .apiVersion(version)
        }
        for cap in requiredCapabilities where kiln_ioctl_int(fd, KILN_KVM_CHECK_EXTENSION, UInt(cap.id)) <= 0 {
            Glibc.close(raw)
            throw .missingCapability(cap.name)
        }
        let size = kiln_ioctl_int(fd, KILN_KVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else {
            Glibc.close(raw)
            throw .ioctl("KVM_GET_VCPU_MMAP_SIZE", Errno.current("ioctl"))
        }
        vcpuMapSize = Int(size)
    }

    deinit { Glibc.close(fd) }

    public func checkExtension(_ cap: Int32) -> Int32 {
        kiln_ioctl_int(fd, KILN_KVM_CHECK_EXTENSION, UInt(cap))
    }

    public func createVM() throws(KVMError) -> VirtualMachine {
        let vm = kiln_ioctl_int(fd, KILN_KVM_CREATE_VM, 0)
        if vm < 0 { throw .ioctl("KVM_CREATE_VM", Errno.current("ioctl")) }
        return VirtualMachine(fd: vm, system: self)
    }

    /// The CPUID leaves this KVM can offer a guest.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let result: [CPUIDEntry]? = try CPUIDEntry.withKVMBuffer(count: capacity) { (buf) throws(KVMError) in
                if kiln_ioctl_ptr(fd, KILN_KVM_GET_SUPPORTED_CPUID, buf) == 0 { return CPUIDEntry.decode(buf) }
                if errno == E2BIG { return nil }
                throw .ioctl("KVM_GET_SUPPORTED_CPUID", Errno.current("ioctl"))
            }
            if let result { return result }
            capacity *= 2
            if capacity > 4096 { throw .ioctl("KVM_GET_SUPPORTED_CPUID", Errno(E2BIG)) }
        }
    }
}
