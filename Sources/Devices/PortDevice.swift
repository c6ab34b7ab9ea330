/// A device reached through x86 port I/O. `offset` is relative to the device's base port.
/// Called on vCPU threads; implementations synchronise their own state.
public protocol PortDevice: AnyObject, Sendable {
    func read(offset: UInt16, into data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt16, from data: UnsafeRawBufferPointer)
}

/// Ports Linux probes at boot on a PC (PCI configuration, POST delay, legacy controllers):
/// reads see no device (all ones), writes are dropped.
public final class AbsentPorts: PortDevice {
    public init() {}
    public func read(offset: UInt16, into data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = 0xFF }
    }
    public func write(offset: UInt16, from data: UnsafeRawBufferPointer) {}
}
