import Devices

/// Routes guest port I/O to devices by port range.
public struct PortBus: Sendable {
    struct Entry: Sendable {
        let base: UInt16
        let count: UInt16
        let device: any PortDevice
    }
    private var entries: [Entry] = []

    public init() {}

    public mutating func attach(_ device: any PortDevice, base: UInt16, count: UInt16) {
        entries.append(Entry(base: base, count: count, device: device))
    }

    /// The device covering `port` and the port's offset within it.
    func device(for port: UInt16) -> (any PortDevice, UInt16)? {
        for e in entries where port >= e.base && port - e.base < e.count { return (e.device, port - e.base) }
        return nil
    }

    /// Handles one access; ports no device claims read as all ones.
    func handle(port: UInt16, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        guard let (device, offset) = device(for: port) else {
            if !isWrite { for i in data.indices { data[i] = 0xFF } }
            return
        }
        if isWrite { device.write(offset: offset, from: UnsafeRawBufferPointer(data)) }
        else { device.read(offset: offset, into: data) }
    }
}

/// Routes guest MMIO accesses outside RAM to devices by address range.
public struct MMIOBus: Sendable {
    struct Entry: Sendable {
        let base: UInt64
        let size: UInt64
        let device: any MMIODevice
    }
    private var entries: [Entry] = []

    public init() {}

    public mutating func attach(_ device: any MMIODevice, base: UInt64, size: UInt64) {
        entries.append(Entry(base: base, size: size, device: device))
    }

    /// Handles one access; addresses no device claims read as all ones.
    func handle(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        for e in entries where address >= e.base && address - e.base < e.size {
            if isWrite { e.device.write(offset: address - e.base, from: UnsafeRawBufferPointer(data)) }
            else { e.device.read(offset: address - e.base, into: data) }
            return
        }
        if !isWrite { for i in data.indices { data[i] = 0xFF } }
    }
}
