import Devices

/// A virtio device the user asked for, before it is built.
public enum VirtioDeviceSpec: Sendable, Equatable {
    case block(MachineConfig.Disk)

    /// Builds the device for slot `index` (the slot picks its MMIO window and IRQ).
    func make(index: Int) throws(MachineError) -> any VirtioDevice {
        switch self {
        case .block(let disk):
            do { return try VirtioBlock(path: disk.path, readOnly: disk.readOnly, serial: "kiln-disk-\(index)") }
            catch { throw .config(error.description) }
        }
    }
}
