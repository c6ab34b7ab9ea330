import Devices

/// Devices by address range: I/O ports or MMIO addresses outside guest RAM.
struct AddressMap<Device>: Sendable where Device: Sendable {
    private var entries: [(base: UInt64, size: UInt64, device: Device)] = []

    mutating func attach(_ device: Device, base: UInt64, size: UInt64) {
        entries.append((base, size, device))
    }

    /// The device covering `address`, and the address's offset within it.
    func lookup(_ address: UInt64) -> (device: Device, offset: UInt64)? {
        for e in entries where address >= e.base && address - e.base < e.size { return (e.device, address - e.base) }
        return nil
    }
}

/// Routes guest port I/O to devices; ports no device claims read as all ones.
public struct PortBus: Sendable {
    private var map = AddressMap<any PortDevice>()

    public init() {}

    public mutating func attach(_ device: any PortDevice, base: UInt16, count: UInt16) {
        map.attach(device, base: UInt64(base), size: UInt64(count))
    }

    func handle(port: UInt16, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        guard let (device, offset) = map.lookup(UInt64(port)) else {
            if !isWrite { for i in data.indices { data[i] = 0xFF } }
            return
        }
        if isWrite { device.write(offset: UInt16(offset), from: UnsafeRawBufferPointer(data)) }
        else { device.read(offset: UInt16(offset), into: data) }
    }
}

/// Routes guest MMIO accesses outside RAM to devices; addresses no device claims read as all ones.
public struct MMIOBus: Sendable {
    private var map = AddressMap<any MMIODevice>()

    public init() {}

    public mutating func attach(_ device: any MMIODevice, base: UInt64, size: UInt64) {
        map.attach(device, base: base, size: size)
    }

    func handle(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer) {
        guard let (device, offset) = map.lookup(address) else {
            if !isWrite { for i in data.indices { data[i] = 0xFF } }
            return
        }
        if isWrite { device.write(offset: offset, from: UnsafeRawBufferPointer(data)) }
        else { device.read(offset: offset, into: data) }
    }
}
