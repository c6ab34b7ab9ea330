import Boot
import CLinux
import Devices
import Glibc
import GuestMemory
import KVM
import LinuxSys

/// A virtio device the user asked for, before it is built.
public enum VirtioDeviceSpec: Sendable, Equatable {
    case block(MachineConfig.Disk)
    /// virtio-vsock with its host Unix socket at `path` (Firecracker's hybrid convention).
    case vsock(path: String, cid: UInt64)
    case net(NetSpec)
    /// virtio-fs over a host directory (or a spare slot, unbound).
    case fs(MachineConfig.Share)

    /// Builds the device for slot `index` (the slot picks its MMIO window and IRQ).
    func make(index: Int, vsockConnector: VirtioVsock.Connector?) throws(MachineError) -> any VirtioDevice {
        switch self {
        case .block(let disk):
            do {
                return try VirtioBlock(path: disk.path, readOnly: disk.readOnly, overlay: disk.overlay, serial: "kiln-disk-\(index)",
                                       limit: disk.limit)
            }
            catch { throw .config(error.description) }
        case .vsock(let path, let cid):
            do { return try VirtioVsock(path: path, guestCID: cid, connector: vsockConnector) }
            catch { throw .config(error.description) }
        case .fs(let share):
            var server: FUSEServer?
            if let path = share.path {
                do { server = try FUSEServer(path: path, options: share.options) } catch { throw .config(error.description) }
            }
            do { return try VirtioFS(tag: share.tag, server: server) } catch { throw .config(error.description) }
        case .net(let spec):
            do {
                let tap = try Tap(name: spec.tap ?? Tap.autoName)
                // A TAP Kiln created is brought up; an existing one's link state is its owner's business.
                if let host = spec.host { try tap.configureHost(address: host.address, prefix: host.prefix) }
                else if tap.created { try tap.bringUp() }
                let name = tap.name, raw = tap.fd.raw
                // The device owns the descriptor from here on, and is the only caller of this.
                return try VirtioNet(backend: tap.descriptor(), name: name, mac: spec.mac,
                                     offloads: { offloads throws(Errno) in try Tap.setOffloads(offloads, fd: raw) },
                                     rxLimit: spec.rxLimit, txLimit: spec.txLimit)
            } catch {
                throw .config("cannot set up TAP \(spec.tap ?? Tap.autoName): \(error)")
            }
        }
    }
}

/// The virtio-mmio devices of one VM, wired to KVM: an irqfd for each device's interrupt line and
/// an ioeventfd for each queue, so notifications reach the device thread without a VM exit to Kiln.
final class VirtioDevices: Sendable {
    let transports: [VirtioMMIOTransport]
    let bus: MMIOBus
    /// The eventfds KVM signals or reads, closed with the VM.
    private let fds: [Int32]
    /// Each transport's queue-notify eventfds, by queue.
    private let notifies: [[Int32]]

    init(_ specs: [VirtioDeviceSpec], vm: VirtualMachine, memory: GuestMemory, events: EventLoop,
         vsockConnector: VirtioVsock.Connector? = nil) throws(MachineError) {
        var transports: [VirtioMMIOTransport] = [], bus = MMIOBus(), fds: [Int32] = [], notifies: [[Int32]] = []
        func eventFD(_ flags: Int32) throws(MachineError) -> Int32 {
            let fd = eventfd(0, flags | Int32(EFD_CLOEXEC))
            guard fd >= 0 else { throw .system(Errno.current("eventfd")) }
            fds.append(fd)
            return fd
        }
        do throws(MachineError) {
            for (i, spec) in specs.enumerated() {
                let device = try spec.make(index: i, vsockConnector: vsockConnector)
                let slot = MachineConfig.virtioSlot(i)
                let irq = try eventFD(0)
                do { try vm.registerIRQFD(irq, gsi: slot.irq) } catch { throw MachineError.kvm(error) }
                let transport = VirtioMMIOTransport(device: device, memory: memory, events: events,
                                                    interrupt: { var one: UInt64 = 1; _ = Glibc.write(irq, &one, 8) },
                                                    log: { writeRaw(2, "kiln: \($0)\n") })
                var queueFDs: [Int32] = []
                for q in 0..<device.queueCount {
                    let notify = try eventFD(Int32(EFD_NONBLOCK))
                    queueFDs.append(notify)
                    do {
                        try vm.registerIOEventFD(notify, mmioAddress: slot.base + VirtioMMIOTransport.queueNotifyOffset,
                                                 value: UInt32(q))
                    } catch { throw MachineError.kvm(error) }
                    do {
                        try events.watch(notify) {
                            var count: UInt64 = 0
                            _ = Glibc.read(notify, &count, 8)
                            if transport.isActive { device.process(queue: q) }
                        }
                    } catch { throw MachineError.system(error) }
                }
                bus.attach(transport, base: slot.base, size: Layout.virtioMMIOWindow)
                transports.append(transport)
                notifies.append(queueFDs)
            }
        } catch {
            for fd in fds { Glibc.close(fd) }
            throw error
        }
        self.transports = transports
        self.bus = bus
        self.fds = fds
        self.notifies = notifies
    }

    /// After a restore: notifies every active device's queues once (`queuesRecheckedAfterRestore`),
    /// through the same eventfds as the guest's notifications, so that the device thread looks at
    /// them when it starts. A notification with nothing new is harmless in virtio.
    func recheckQueuesAfterRestore() {
        for (transport, queueFDs) in zip(transports, notifies) where transport.isActive {
            for q in transport.device.queuesRecheckedAfterRestore where q < queueFDs.count {
                var one: UInt64 = 1
                _ = Glibc.write(queueFDs[q], &one, 8)
            }
        }
    }

    deinit { for fd in fds { Glibc.close(fd) } }

    /// The virtio-fs devices, each served on a thread of its own while the VM runs.
    var fileSystems: [VirtioFS] { transports.compactMap { $0.device as? VirtioFS } }

    /// Lets devices release their backends (sockets, TAP) once the VM has stopped.
    func shutdown() { for t in transports { t.device.shutdown() } }
}
