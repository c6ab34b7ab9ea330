import CSandbox
import Glibc

/// What a filter does with a system call its policy does not allow.
public enum SeccompMode: String, Sendable, CaseIterable {
    /// The process dies by SIGSYS (SECCOMP_RET_KILL_PROCESS): the default.
    case kill
    /// Debugging: Kiln prints the thread and the call on stderr, then exits with status 159.
    case trap
    /// Debugging: the call is allowed and the kernel logs it (audit type 1326, see `dmesg`).
    case log
    /// No filters at all (`kiln boot --no-seccomp`): debugging only.
    case off

    var defaultAction: UInt32 {
        switch self {
        case .kill, .off: return KILN_SECCOMP_RET_KILL_PROCESS
        case .trap: return KILN_SECCOMP_RET_TRAP
        case .log: return KILN_SECCOMP_RET_LOG
        }
    }
}

/// The kinds of thread in a VMM process, each with its policy in Security/seccomp/KIND.policy.
public enum ThreadKind: String, Sendable, CaseIterable {
    /// The thread that calls Machine.run(), once it has started the others.
    case main
    /// kiln-loader: copies the kernel into guest memory before the guest starts.
    case loader
    /// kiln-vcpuN: KVM_RUN and the exits it returns.
    case vcpu
    /// kiln-devices: the virtio event loop.
    case devices
    /// kiln-fs: one share's FUSE server (virtio-fs, docs/volumes.md).
    case fs
    /// kiln-console: host input to the serial port.
    case console
    /// kiln-control: pause, resume and snapshot requests (a --control socket or the jail's command channel).
    case control
    /// Every thread of `kiln run`'s own process once its jailed VMM runs (not a VMM thread).
    case supervisor
    /// Every thread of `kiln serve` once its launcher runs and its listener is bound.
    case service
    /// Every thread of `kiln-egress`, a sandbox's DNS answerer and Host/SNI proxy, once bound.
    case egress

    /// The policy's text as embedded in the binary.
    public var policyText: String { embeddedPolicies[rawValue] ?? "" }

    public func policy() throws(SeccompError) -> Policy {
        do { return try Policy(parsing: policyText) } catch { throw .policy(self, error) }
    }
}

public enum SeccompError: Error, Equatable, CustomStringConvertible {
    case policy(ThreadKind, Policy.ParseError)
    case compile(ThreadKind, Filter.CompileError)
    case install(ThreadKind, errno: Int32)
    case trapHandler(errno: Int32)

    public var description: String {
        switch self {
        case .policy(let kind, let e): return "seccomp policy \(kind.rawValue).policy, \(e)"
        case .compile(let kind, let e): return "seccomp policy \(kind.rawValue).policy: \(e)"
        case .install(let kind, let e): return "cannot install the \(kind.rawValue) seccomp filter: \(String(cString: strerror(e)))"
        case .trapHandler(let e): return "cannot install the seccomp trap handler: \(String(cString: strerror(e)))"
        }
    }
}

/// Every thread kind's filter, compiled up front so that a thread installing its own does
/// nothing but two system calls (prctl, seccomp).
public struct SeccompFilters: Sendable {
    public let mode: SeccompMode
    private let filters: [ThreadKind: Filter]

    public init(mode: SeccompMode) throws(SeccompError) {
        self.mode = mode
        var filters: [ThreadKind: Filter] = [:]
        if mode != .off {
            for kind in ThreadKind.allCases {
                do { filters[kind] = try Filter(try kind.policy(), defaultAction: mode.defaultAction) }
                catch let e as Filter.CompileError { throw .compile(kind, e) }
                catch let e as SeccompError { throw e }
                catch { throw .compile(kind, Filter.CompileError(description: "\(error)")) }
            }
        }
        if mode == .trap {
            let rc = kiln_seccomp_report_traps(SyscallNames.table, Int32(SyscallNames.count))
            if rc != 0 { throw .trapHandler(errno: rc) }
        }
        self.filters = filters
    }

    /// Confines every thread of the process, now and later, to `kind`'s policy (TSYNC): for a
    /// process whose threads (runtime workers included) cannot each install their own.
    public func installOnAllThreads(_ kind: ThreadKind) throws(SeccompError) {
        try install(kind, using: kiln_seccomp_install_all_threads)
    }

    /// Confines the calling thread (and threads it starts later) to `kind`'s policy.
    public func install(_ kind: ThreadKind) throws(SeccompError) {
        try install(kind, using: kiln_seccomp_install)
    }

    private func install(_ kind: ThreadKind, using call: (UnsafePointer<sock_filter>?, UInt16) -> Int32) throws(SeccompError) {
        guard mode != .off, let filter = filters[kind] else { return }
        kiln_seccomp_set_thread_kind(kind.rawValue)
        let rc = filter.instructions.withUnsafeBufferPointer { call($0.baseAddress, UInt16($0.count)) }
        if rc != 0 { throw .install(kind, errno: rc) }
        #if DEBUG
        // Tests only (compiled out of release builds): prove this filter is in force.
        if let target = getenv("KILN_TEST_FORBIDDEN_SYSCALL"), String(cString: target) == kind.rawValue {
            _ = getppid()
        }
        #endif
    }
}

/// System call names by number, as C strings for the trap handler (kept for the process's life).
enum SyscallNames {
    static let count = Int((syscallNumbers.values.max() ?? 0) + 1)
    nonisolated(unsafe) static let table: UnsafeMutablePointer<UnsafePointer<CChar>?> = {
        let table = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: count)
        table.initialize(repeating: nil, count: count)
        for (name, number) in syscallNumbers { table[Int(number)] = UnsafePointer(strdup(name)) }
        return table
    }()
}
