import CKVM

/// A port I/O access the guest made; `data` points into the vCPU's shared run
/// area and is valid until the next KVM_RUN. For `in`, the handler fills it.
public struct PortAccess {
    public let port: UInt16
    public let size: Int
    public let count: Int
    public let isWrite: Bool
    public let data: UnsafeMutableRawBufferPointer
}

/// A memory-mapped I/O access outside guest RAM; for reads the handler fills `data`.
public struct MMIOAccess {
    public let address: UInt64
    public let isWrite: Bool
    public let data: UnsafeMutableRawBufferPointer
}

/// Why KVM_RUN returned, decoded from struct kvm_run.
public enum VMExit {
    case io(PortAccess)
    case mmio(MMIOAccess)
    case hlt
    case shutdown
    /// KVM could not handle the instruction at RIP (emulation failure on our hosts).
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64, cpu: UInt32)
    case systemEvent(type: UInt32)
    /// KVM_RUN was interrupted by a signal or an immediate-exit request.
    case interrupted
    /// An exit whose fields are inconsistent (e.g. I/O data outside the run area).
    case malformed(reason: UInt32)
    case unknown(reason: UInt32)

    /// Decodes the exit recorded in a kvm_run area of `size` bytes.
    public static func decode(run: UnsafeMutableRawPointer, size: Int) -> VMExit {
        let r = run.assumingMemoryBound(to: kvm_run.self)
        let reason = r.pointee.exit_reason
        switch Int32(reason) {
        case KVM_EXIT_IO:
            let io = r.pointee.io
            let bytes = Int(io.size) * Int(io.count)
            let offset = Int(io.data_offset)
            guard [1, 2, 4].contains(Int(io.size)), io.count >= 1,
                  offset >= MemoryLayout<kvm_run>.size, offset <= size, bytes <= size - offset
            else { return .malformed(reason: reason) }
            return .io(PortAccess(port: io.port, size: Int(io.size), count: Int(io.count),
                                  isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT),
                                  data: UnsafeMutableRawBufferPointer(start: run + offset, count: bytes)))
        case KVM_EXIT_MMIO:
            let len = Int(r.pointee.mmio.len)
            guard (1...8).contains(len) else { return .malformed(reason: reason) }
            let dataOffset = kiln_kvm_run_mmio_data_offset()
            return .mmio(MMIOAccess(address: r.pointee.mmio.phys_addr, isWrite: r.pointee.mmio.is_write != 0,
                                    data: UnsafeMutableRawBufferPointer(start: run + dataOffset, count: len)))
        case KVM_EXIT_HLT: return .hlt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_INTERNAL_ERROR:
            let failure = r.pointee.`internal`
            let n = min(Int(failure.ndata), 16)
            let data = withUnsafeBytes(of: failure.data) { raw in
                (0..<n).map { raw.load(fromByteOffset: $0 * 8, as: UInt64.self) }
            }
            return .internalError(suberror: failure.suberror, data: data)
        case KVM_EXIT_FAIL_ENTRY:
            let f = r.pointee.fail_entry
            return .failEntry(reason: f.hardware_entry_failure_reason, cpu: f.cpu)
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: r.pointee.system_event.type)
        case KVM_EXIT_INTR: return .interrupted
        default: return .unknown(reason: reason)
        }
    }
}

extension VMExit {
    /// A name for diagnostics.
    public var name: String {
        switch self {
        case .io: return "KVM_EXIT_IO"
        case .mmio: return "KVM_EXIT_MMIO"
        case .hlt: return "KVM_EXIT_HLT"
        case .shutdown: return "KVM_EXIT_SHUTDOWN (triple fault)"
        case .internalError: return "KVM_EXIT_INTERNAL_ERROR"
        case .failEntry: return "KVM_EXIT_FAIL_ENTRY"
        case .systemEvent: return "KVM_EXIT_SYSTEM_EVENT"
        case .interrupted: return "KVM_EXIT_INTR"
        case .malformed(let r): return "malformed exit \(r)"
        case .unknown(let r): return "unknown exit \(r)"
        }
    }
}

/// Internal-error suberrors (KVM_INTERNAL_ERROR_*), named for diagnostics.
public func internalErrorName(_ suberror: UInt32) -> String {
    switch Int32(suberror) {
    case KVM_INTERNAL_ERROR_EMULATION: return "emulation failure"
    case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception during exception delivery"
    case KVM_INTERNAL_ERROR_DELIVERY_EV: return "event delivery failure"
    default: return "suberror \(suberror)"
    }
}
