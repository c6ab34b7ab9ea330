import Devices
import LinuxSys

/// A virtio device the user asked for, before it is built.
public enum VirtioDeviceSpec: Sendable, Equatable {
    case block(MachineConfig.Disk)
    /// virtio-vsock with its host Unix socket at `path` (Firecracker's hybrid convention).
    case vsock(path: String, cid: UInt64)
    case net(NetSpec)

    /// Builds the device for slot `index` (the slot picks its MMIO window and IRQ).
    func make(index: Int) throws(MachineError) -> any VirtioDevice {
        switch self {
        case .block(let disk):
            do { return try VirtioBlock(path: disk.path, readOnly: disk.readOnly, serial: "kiln-disk-\(index)") }
            catch { throw .config(error.description) }
        case .vsock(let path, let cid):
            do { return try VirtioVsock(path: path, guestCID: cid) }
            catch { throw .config(error.description) }
        case .net(let spec):
            do {
                let tap = try Tap(name: spec.tap ?? Tap.autoName)
                // A TAP Kiln created is brought up; an existing one's link state is its owner's business.
                if let host = spec.host { try tap.configureHost(address: host.address, prefix: host.prefix) }
                else if tap.created { try tap.bringUp() }
                let name = tap.name
                return VirtioNet(backend: tap.descriptor(), name: name, mac: spec.mac)
            } catch {
                throw .config("cannot set up TAP \(spec.tap ?? Tap.autoName): \(error)")
            }
        }
    }
}
