import LinuxSys

/// Why KVM could not be used or a KVM operation failed.
public enum KVMError: Error, CustomStringConvertible, Sendable {
    case deviceMissing(path: String)
    case permissionDenied(path: String)
    case openFailed(path: String, Errno)
    case apiVersion(Int32)
    case missingCapability(String)
    case ioctl(String, Errno)

    public var description: String {
        switch self {
        case .deviceMissing(let path):
            return "\(path) does not exist: this machine has no KVM (enable virtualization or load the kvm module)"
        case .permissionDenied(let path):
            return "no permission to open \(path): run as root or join the group that owns it"
        case .openFailed(let path, let e): return "cannot open \(path): \(e)"
        case .apiVersion(let v): return "KVM API version \(v) is not supported (Kiln needs 12)"
        case .missingCapability(let name): return "this KVM lacks a capability Kiln needs: \(name)"
        case .ioctl(let name, let e): return "\(name) failed: \(e)"
        }
    }
}
