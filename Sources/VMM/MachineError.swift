import Boot
import GuestMemory
import KVM
import LinuxSys

/// Why a VM could not be built or started.
public enum MachineError: Error, CustomStringConvertible, Sendable {
    case config(String)
    case kvm(KVMError)
    case kernel(path: String, BootError)
    case initrd(path: String, BootError)
    case memory(GuestMemoryError)
    case system(Errno)
    /// A snapshot could not be written or loaded (before any vCPU ran).
    case snapshot(path: String, String)

    public var description: String {
        switch self {
        case .config(let s): return s
        case .kvm(let e): return e.description
        case .kernel(let path, .io(_, let e)) where e.code == 2: return "kernel \(path) not found"
        case .kernel(let path, let e): return "cannot boot kernel \(path): \(e)"
        case .initrd(let path, .io(_, let e)) where e.code == 2: return "initrd \(path) not found"
        case .initrd(let path, let e): return "cannot load initrd \(path): \(e)"
        case .memory(let e): return e.description
        case .system(let e): return e.description
        case .snapshot(let path, let why): return "snapshot \(path): \(why)"
        }
    }
}

/// How a VM ended.
public enum MachineOutcome: Equatable, Sendable {
    /// The guest asked to be reset (reboot, or shutdown under reboot=k): a clean end.
    case guestShutdown
    /// The guest kernel panicked (seen on the console) before it reset.
    case guestPanicked
    /// The user ended the session from the console (Ctrl-A x).
    case userQuit
    /// The VM stopped on an error; the text names the exit and where the vCPU was.
    case failed(String)
}
