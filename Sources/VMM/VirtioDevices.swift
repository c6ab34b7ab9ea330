import Devices

/// A virtio device the user asked for, before it is built.
public enum VirtioDeviceSpec: Sendable, Equatable {
    case block(MachineConfig.Disk)
    /// virtio-vsock with its host Unix socket at `path` (Firecracker's hybrid convention).
    case vsock(path: String, cid: UInt64)

    /// Builds the device for slot `index` (the slot picks its MMIO window and IRQ).
    func make(index: Int) throws(MachineError) -> any VirtioDevice {
        switch self {
        case .block(let disk):
            do { return try VirtioBlock(path: disk.path, readOnly: disk.readOnly, serial: "kiln-disk-\(index)") }
            catch { throw .config(error.description) }
        case .vsock(let path, let cid):
            do { return try VirtioVsock(path: path, guestCID: cid) }
            catch { throw .config(error.description) }
        }
    }
}
