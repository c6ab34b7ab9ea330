import GuestMemory
import Synchronization

/// The virtio-mmio transport, version 2 (virtio 1.x, 4.2.2): the register file through which
/// the guest driver discovers a device, negotiates features and sets up its queues.
public final class VirtioMMIOTransport: MMIODevice {
    public static let windowSize: UInt64 = 0x1000
    static let magic: UInt32 = 0x7472_6976 // "virt"
    static let vendor: UInt32 = 0x4E4C_494B // "KILN"
    /// Register offset of QueueNotify, where an ioeventfd can catch writes.
    public static let queueNotifyOffset: UInt64 = 0x050

    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [Virtqueue]
        var interruptStatus: UInt32 = 0
        var configGeneration: UInt32 = 0
        var active = false
    }

    public let device: any VirtioDevice
    let memory: GuestMemory
    let events: any EventRegistry
    private let state: Mutex<State>
    private let raiseIRQ: @Sendable () -> Void
    private let log: @Sendable (String) -> Void

    public init(device: any VirtioDevice, memory: GuestMemory, events: any EventRegistry,
                interrupt: @escaping @Sendable () -> Void, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.device = device
        self.memory = memory
        self.events = events
        self.raiseIRQ = interrupt
        self.log = log
        state = Mutex(State(queues: Array(repeating: Virtqueue(), count: device.queueCount)))
    }

    public var status: UInt32 { state.withLock { $0.status } }

    /// The register file and queues as a snapshot records them (the VM is paused).
    public struct SavedState: Sendable, Equatable {
        public var status: UInt32, deviceFeaturesSelect: UInt32, driverFeaturesSelect: UInt32
        public var driverFeatures: UInt64
        public var queueSelect: UInt32, interruptStatus: UInt32, configGeneration: UInt32
        public var active: Bool
        public var queues: [Virtqueue]
        public init(status: UInt32, deviceFeaturesSelect: UInt32, driverFeaturesSelect: UInt32, driverFeatures: UInt64,
                    queueSelect: UInt32, interruptStatus: UInt32, configGeneration: UInt32, active: Bool, queues: [Virtqueue]) {
            self.status = status; self.deviceFeaturesSelect = deviceFeaturesSelect; self.driverFeaturesSelect = driverFeaturesSelect
            self.driverFeatures = driverFeatures; self.queueSelect = queueSelect; self.interruptStatus = interruptStatus
            self.configGeneration = configGeneration; self.active = active; self.queues = queues
        }
    }

    /// The transport's registers with the device's live queue progress (an active device owns its queues).
    public func save() -> SavedState {
        let s = state.withLock { $0 }
        var queues = s.queues
        if s.active, let live = device.liveQueues(), live.count == queues.count { queues = live }
        return SavedState(status: s.status, deviceFeaturesSelect: s.deviceFeaturesSelect, driverFeaturesSelect: s.driverFeaturesSelect,
                          driverFeatures: s.driverFeatures, queueSelect: s.queueSelect, interruptStatus: s.interruptStatus,
                          configGeneration: s.configGeneration, active: s.active, queues: queues)
    }

    /// Puts saved registers back on a fresh transport and re-activates the device with the saved queues.
    public func restore(_ saved: SavedState) {
        guard saved.queues.count == device.queueCount else { return }
        state.withLock { s in
            s = State(status: saved.status, deviceFeaturesSelect: saved.deviceFeaturesSelect,
                      driverFeaturesSelect: saved.driverFeaturesSelect, driverFeatures: saved.driverFeatures,
                      queueSelect: saved.queueSelect, queues: saved.queues, interruptStatus: saved.interruptStatus,
                      configGeneration: saved.configGeneration, active: saved.active)
        }
        guard saved.active else { return }
        device.activate(queues: saved.queues, context: VirtioContext(
            memory: memory, features: saved.driverFeatures,
            interrupt: { [weak self] in self?.signal(1) },
            fail: { [weak self] reason in self?.markNeedsReset(reason) }, events: events))
        device.restored()
    }
    public var isActive: Bool { state.withLock { $0.active } }

    /// Sets used-buffer (bit 0) or config-change (bit 1) in InterruptStatus and pulses the line.
    public func signal(_ bits: UInt32 = 1) {
        state.withLock { $0.interruptStatus |= bits }
        raiseIRQ()
    }

    /// The device found the guest breaking the protocol: stop it until the driver resets it.
    public func markNeedsReset(_ reason: String) {
        log("virtio-\(device.deviceID): \(reason); device needs reset")
        state.withLock { $0.status |= VirtioStatus.needsReset }
        signal(2)
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset >= 0x100 {
            device.readConfig(offset: Int(offset - 0x100), into: data)
            return
        }
        guard data.count == 4 else { for i in data.indices { data[i] = 0 }; return }
        let value: UInt32 = state.withLock { s in
            let q = Int(s.queueSelect)
            let queue = q < s.queues.count ? s.queues[q] : nil
            switch offset {
            case 0x000: return VirtioMMIOTransport.magic
            case 0x004: return 2
            case 0x008: return device.deviceID
            case 0x00C: return VirtioMMIOTransport.vendor
            case 0x010:
                let features = device.features
                return s.deviceFeaturesSelect == 0 ? UInt32(truncatingIfNeeded: features)
                    : s.deviceFeaturesSelect == 1 ? UInt32(truncatingIfNeeded: features >> 32) : 0
            case 0x034: return queue == nil ? 0 : UInt32(Virtqueue.maxSize)
            case 0x044: return queue?.ready == true ? 1 : 0
            case 0x060: return s.interruptStatus
            case 0x070: return s.status
            case 0x0FC: return s.configGeneration
            default: return 0
            }
        }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset >= 0x100 {
            device.writeConfig(offset: Int(offset - 0x100), from: data)
            return
        }
        guard data.count == 4 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        var activate: (queues: [Virtqueue], features: UInt64)?
        var resetDevice = false
        var notify: Int?
        state.withLock { s in
            let q = Int(s.queueSelect)
            let queueSetup = q < s.queues.count && !s.queues[q].ready && !s.active
            switch offset {
            case 0x014: s.deviceFeaturesSelect = value
            case 0x020 where s.status & VirtioStatus.featuresOK == 0:
                if s.driverFeaturesSelect == 0 { s.driverFeatures = (s.driverFeatures & ~0xFFFF_FFFF) | UInt64(value) }
                if s.driverFeaturesSelect == 1 { s.driverFeatures = (s.driverFeatures & 0xFFFF_FFFF) | UInt64(value) << 32 }
            case 0x024: s.driverFeaturesSelect = value
            case 0x030: s.queueSelect = value
            case 0x038 where queueSetup:
                if Virtqueue.isValidSize(value) { s.queues[q].size = UInt16(value) }
            case 0x044 where q < s.queues.count && !s.active:
                if value == 1 {
                    s.queues[q].eventIndex = s.driverFeatures & VirtioFeature.eventIndex != 0
                    s.queues[q].ready = s.queues[q].validate(memory)
                } else {
                    s.queues[q].ready = false
                }
            case 0x050: notify = Int(value)
            case 0x064: s.interruptStatus &= ~value
            case 0x070: Self.setStatus(&s, value, device: device, activate: &activate, reset: &resetDevice)
            case 0x080 where queueSetup: s.queues[q].descriptorTable = low(s.queues[q].descriptorTable, value)
            case 0x084 where queueSetup: s.queues[q].descriptorTable = high(s.queues[q].descriptorTable, value)
            case 0x090 where queueSetup: s.queues[q].availableRing = low(s.queues[q].availableRing, value)
            case 0x094 where queueSetup: s.queues[q].availableRing = high(s.queues[q].availableRing, value)
            case 0x0A0 where queueSetup: s.queues[q].usedRing = low(s.queues[q].usedRing, value)
            case 0x0A4 where queueSetup: s.queues[q].usedRing = high(s.queues[q].usedRing, value)
            default: break
            }
        }
        if resetDevice { device.reset() }
        if let activate {
            device.activate(queues: activate.queues, context: VirtioContext(
                memory: memory, features: activate.features,
                interrupt: { [weak self] in self?.signal(1) },
                fail: { [weak self] reason in self?.markNeedsReset(reason) }, events: events))
        }
        // Without an ioeventfd on QueueNotify, the write arrives here on the vCPU thread.
        if let notify, isActive, notify < device.queueCount { device.process(queue: notify) }
    }

    /// Applies a Status write: reset on 0, feature check on FEATURES_OK, activation on DRIVER_OK.
    private static func setStatus(_ s: inout State, _ value: UInt32, device: any VirtioDevice,
                                  activate: inout (queues: [Virtqueue], features: UInt64)?, reset: inout Bool) {
        if value == 0 {
            reset = s.active || s.status != 0
            let count = s.queues.count
            s = State(queues: Array(repeating: Virtqueue(), count: count))
            return
        }
        var value = value
        if value & VirtioStatus.featuresOK != 0 && s.status & VirtioStatus.featuresOK == 0 {
            // The driver may only accept what was offered, and must speak virtio 1.x.
            let offered = device.features
            if s.driverFeatures & ~offered != 0 || s.driverFeatures & VirtioFeature.version1 == 0 {
                value &= ~VirtioStatus.featuresOK
            }
        }
        if value & VirtioStatus.driverOK != 0 && !s.active {
            guard value & VirtioStatus.featuresOK != 0, s.queues.allSatisfy({ $0.ready }) else {
                s.status = value | VirtioStatus.needsReset
                return
            }
            s.active = true
            activate = (s.queues, s.driverFeatures)
        }
        s.status = value | (s.status & VirtioStatus.needsReset)
    }
}

private func low(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & ~0xFFFF_FFFF) | UInt64(v) }
private func high(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & 0xFFFF_FFFF) | UInt64(v) << 32 }
