import Synchronization

/// Just enough of the PC keyboard controller for `reboot=k`: writing the pulse-reset
/// command 0xFE to the command port asks the VMM to end the VM.
public final class I8042: PortDevice {
    public static let dataPort: UInt16 = 0x60
    public static let commandPort: UInt16 = 0x64
    static let resetCommand: UInt8 = 0xFE

    private let onReset: @Sendable () -> Void
    private let resetRequested = Atomic<Bool>(false)

    public init(onReset: @escaping @Sendable () -> Void) { self.onReset = onReset }

    public var didRequestReset: Bool { resetRequested.load(ordering: .acquiring) }

    /// `offset` 0 is the data port (0x60), 4 the status/command port (0x64).
    public func read(offset: UInt16, into data: UnsafeMutableRawBufferPointer) {
        // Status: output buffer empty, input buffer empty (ready for a command); data: nothing.
        for i in data.indices { data[i] = 0 }
    }

    public func write(offset: UInt16, from data: UnsafeRawBufferPointer) {
        guard offset == 4, data.first == I8042.resetCommand else { return }
        if !resetRequested.exchange(true, ordering: .acquiringAndReleasing) { onReset() }
    }
}
