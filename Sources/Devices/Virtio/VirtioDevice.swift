import GuestMemory

/// A device reached through memory-mapped I/O; `offset` is relative to its base address.
/// Called on vCPU threads; implementations synchronise their own state.
public protocol MMIODevice: AnyObject, Sendable {
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, from data: UnsafeRawBufferPointer)
}

/// Feature bits shared by every virtio device (virtio 1.x, 6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
}

/// Device status bits the driver sets (virtio 1.x, 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    public static let needsReset: UInt32 = 64
    public static let failed: UInt32 = 128
}

/// What a transport gives a device once the driver has set it up.
public struct VirtioContext: Sendable {
    public let memory: GuestMemory
    public let features: UInt64
    /// Raises the used-buffer interrupt.
    public let interrupt: @Sendable () -> Void
    /// Marks the device broken (DEVICE_NEEDS_RESET) after the guest violated the protocol.
    public let fail: @Sendable (String) -> Void
    /// The device thread's event loop, for backend file descriptors.
    public let events: any EventRegistry

    public init(memory: GuestMemory, features: UInt64, interrupt: @escaping @Sendable () -> Void,
                fail: @escaping @Sendable (String) -> Void, events: any EventRegistry) {
        self.memory = memory; self.features = features; self.interrupt = interrupt; self.fail = fail; self.events = events
    }
}

/// A virtio device behind a transport: identity, features, config space and queue processing.
public protocol VirtioDevice: AnyObject, Sendable {
    /// Virtio device ID (2 block, 1 net, 19 vsock).
    var deviceID: UInt32 { get }
    var queueCount: Int { get }
    /// Offered features, including VERSION_1.
    var features: UInt64 { get }
    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, from data: UnsafeRawBufferPointer)
    /// The driver finished setup (DRIVER_OK): the device owns `queues` from now on.
    func activate(queues: [Virtqueue], context: VirtioContext)
    /// The driver notified queue `index` (from the event loop thread).
    func process(queue index: Int)
    /// The driver reset the device: drop the queues and any in-flight state.
    func reset()
    /// The VM ended: release host resources (sockets, files the device created).
    func shutdown()
    /// The queues as the device holds them now (progress included), for a snapshot of a paused VM;
    /// nil when the device is not active.
    func liveQueues() -> [Virtqueue]?
    /// Called once after a restore re-activated the device: tell the guest what did not survive.
    func restored()
    /// The queues the VMM notifies once after a restore, as if the guest had: a notification the
    /// guest made just before the snapshot sat in the old VM's ioeventfd and is gone, and with
    /// EVENT_IDX the guest notifies again only past the index the device asked for, so that queue
    /// would wait for ever. A queue whose notification means more than "look at me" is left out.
    var queuesRecheckedAfterRestore: Range<Int> { get }
}

extension VirtioDevice {
    public func shutdown() {}
    public func restored() {}
    public var queuesRecheckedAfterRestore: Range<Int> { 0..<queueCount }
    /// Devices that keep no queue copies of their own report none (the transport's are current).
    public func liveQueues() -> [Virtqueue]? { nil }

    /// Serves a read of a little-endian config space image.
    public func serveConfig(_ bytes: [UInt8], offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for i in data.indices {
            let o = offset + i
            data[i] = o >= 0 && o < bytes.count ? bytes[o] : 0
        }
    }
}
