import Boot
import CLinux
import Devices
import Glibc
import GuestMemory
import KVM
import LinuxSys
import Seccomp
import Synchronization

/// One virtual machine: KVM state, guest memory, devices and the threads that run them.
public final class Machine: Sendable {
    public let config: MachineConfig
    /// The kernel as loaded at boot; nil for a machine restored from a snapshot.
    public let loaded: LoadedKernel?
    let vm: VirtualMachine
    let memory: GuestMemory
    let vcpus: [VCPU]
    let bus: PortBus
    let virtio: VirtioDevices
    let eventLoop: EventLoop
    let serial: Serial
    let console: Console
    let serialIRQ: EventFD
    let stopEvent: EventFD
    let lifecycle: Lifecycle
    let gate: PauseGate
    /// Serialises pause, resume and snapshot requests.
    let control = Mutex<Void>(())
    let confinement: Confinement
    private let firstRun = Atomic<Bool>(false)
    static let kickSignal = kiln_sigrtmin()

    /// Builds the VM and loads the kernel; nothing runs until `run()`.
    public convenience init(_ config: MachineConfig) throws(MachineError) {
        try config.validate()
        let confinement = try Confinement(config.seccomp)
        BootTrace.mark("seccomp-compiled")
        let memory: GuestMemory, vm: VirtualMachine, vcpus: [VCPU]
        let eventLoop: EventLoop, virtio: VirtioDevices, loaded: LoadedKernel
        let kernel: FileImage, initrd: FileImage?
        do { kernel = try FileImage(path: config.kernelPath) } catch { throw .kernel(path: config.kernelPath, error) }
        if let path = config.initrdPath {
            do { initrd = try FileImage(path: path) } catch { throw .initrd(path: path, error) }
        } else { initrd = nil }

        // Guest memory first, so the kernel and initrd can be copied in on a loader thread
        // while this thread makes the VM (the two take similar time).
        let layout = Layout.ramRegions(size: UInt64(config.memoryMiB) << 20)
        do { memory = try GuestMemory(layout: layout.map { ($0.base, Int($0.size)) }) }
        catch { throw MachineError.memory(error) }
        let request = BootRequest(kernel: kernel, initrd: initrd, cmdline: config.effectiveCmdline,
                                  cpus: config.cpus, preferredProtocol: config.bootProtocol)
        let load = LoadResult()
        let loader = try? Thread.spawn(name: "kiln-loader") {
            if confinement.enter(.loader) { load.run(request, into: memory) }
        }
        if loader == nil { load.run(request, into: memory) }

        do {
            let system = try KVMSystem()
            BootTrace.mark("kvm-opened")
            vm = try system.createVM()
            BootTrace.mark("vm-created")
            try vm.setSystemPages(tss: Layout.kvmTSS, identityMap: Layout.kvmIdentityMap)
            try vm.createInterruptControllers()
            BootTrace.mark("irqchip-created")
            for (slot, region) in memory.regions.enumerated() {
                try vm.setMemoryRegion(slot: UInt32(slot), guestBase: region.guestBase, size: region.size,
                                       hostAddress: region.hostAddress)
            }
            BootTrace.mark("memory-registered")

            let supported = try system.supportedCPUID()
            BootTrace.mark("cpuid-read")
            var built: [VCPU] = []
            for id in 0..<UInt32(config.cpus) {
                let vcpu = try vm.createVCPU(id: id)
                try VCPUSetup.configure(vcpu, cpuid: CPUProfile.entries(from: supported, vcpu: id, cpus: config.cpus,
                                                                                 profile: config.hostProfile))
                built.append(vcpu)
            }
            vcpus = built
            BootTrace.mark("vcpus-configured")

            eventLoop = try EventLoop()
            virtio = try VirtioDevices(config.virtioDevices, vm: vm, memory: memory, events: eventLoop,
                                       vsockConnector: config.vsockConnector)
            loader?.join()
            if let failure = confinement.failed { throw MachineError.config(failure) }
            loaded = try load.result(kernelPath: config.kernelPath)
            BootTrace.mark("kernel-loaded")
            try VCPUSetup.enter(vcpus[0], loaded.entry)
        } catch let error as MachineError {
            loader?.join() // never leave the loader writing into memory that is going away
            throw error
        } catch let error as KVMError {
            loader?.join()
            throw .kvm(error)
        } catch let error as Errno {
            loader?.join()
            throw .system(error)
        } catch {
            loader?.join()
            throw .config("\(error)")
        }

        try self.init(config: config, loaded: loaded, vm: vm, memory: memory, vcpus: vcpus, virtio: virtio,
                      eventLoop: eventLoop, confinement: confinement)
    }

    /// The part common to booting and restoring: console, lifecycle, port devices.
    init(config: MachineConfig, loaded: LoadedKernel?, vm: VirtualMachine, memory: GuestMemory, vcpus: [VCPU],
         virtio: VirtioDevices, eventLoop: EventLoop, confinement: Confinement) throws(MachineError) {
        self.config = config; self.loaded = loaded; self.vm = vm; self.memory = memory; self.vcpus = vcpus
        self.virtio = virtio; self.eventLoop = eventLoop; self.confinement = confinement
        do {
            gate = try PauseGate()
            serialIRQ = try EventFD()
            stopEvent = try EventFD()
            try vm.registerIRQFD(serialIRQ.raw, gsi: Serial.com1IRQ)
        } catch let error as KVMError { throw .kvm(error) } catch let error as Errno { throw .system(error) } catch { throw .config("\(error)") }
        let console = Console(input: config.consoleInput, output: config.consoleOutput, limit: config.consoleLimit,
                              rotation: config.consoleRotation)
        self.console = console
        let lifecycle = Lifecycle(vcpus: vcpus, stopEvent: stopEvent.raw, console: console)
        self.lifecycle = lifecycle
        let irq = serialIRQ.raw
        serial = Serial(output: { console.guestWrote($0) },
                        interrupt: { var one: UInt64 = 1; _ = Glibc.write(irq, &one, 8) })
        var bus = PortBus()
        bus.attach(serial, base: Serial.com1Base, count: Serial.portCount)
        bus.attach(CMOS(), base: CMOS.basePort, count: 2)
        bus.attach(AbsentPorts(), base: 0x80, count: 1) // POST/delay port
        bus.attach(I8042(onReset: { lifecycle.stop(.guestShutdown) }), base: I8042.dataPort, count: 5)
        self.bus = bus
    }

    /// Runs the VM until it ends, and says how.
    public func run() -> MachineOutcome {
        if kiln_install_kick_handler(Machine.kickSignal) != 0 {
            return .failed("cannot install the vCPU kick signal handler: \(Errno.current("sigaction"))")
        }
        var vcpuThreads: [Thread] = []
        do {
            for vcpu in vcpus {
                let t = try Thread.spawn(name: "kiln-vcpu\(vcpu.id)") { [self] in
                    confinement.enterStarted(.vcpu, waitForGate: true)
                    runVCPU(vcpu)
                }
                vcpuThreads.append(t)
                lifecycle.running(t)
            }
        } catch {
            stop(.failed("cannot start a vCPU thread: \(error)"))
        }
        let stopFD = stopEvent.raw
        let deviceThread = virtio.transports.isEmpty ? nil : try? Thread.spawn(name: "kiln-devices") { [self] in
            confinement.enterStarted(.devices, waitForGate: false)
            eventLoop.run(stop: stopFD, gate: gate)
        }
        // Each share's FUSE server on a thread of its own, under the fs policy (docs/volumes.md).
        var fsThreads: [Thread] = []
        for fs in virtio.fileSystems {
            if let t = try? Thread.spawn(name: "kiln-fs", { [self] in
                confinement.enterStarted(.fs, waitForGate: false)
                fs.serve(stop: stopFD)
            }) { fsThreads.append(t) }
        }
        let consoleThread = try? Thread.spawn(name: "kiln-console") { [self] in
            confinement.enterStarted(.console, waitForGate: false)
            console.pump(into: serial, stop: stopFD, gate: gate) { stop(.userQuit) }
        }
        // Every thread filtered, this one last, before the vCPUs may enter the guest.
        confinement.enterRunner(started: vcpuThreads.count + fsThreads.count + (deviceThread == nil ? 0 : 1) + (consoleThread == nil ? 0 : 1)) {
            stop(.failed($0))
        }
        BootTrace.mark("threads-filtered")
        for t in vcpuThreads { t.join() }
        stopEvent.signal()
        consoleThread?.join()
        deviceThread?.join()
        for t in fsThreads { t.join() }
        virtio.shutdown()
        console.restore()
        return lifecycle.outcome ?? .failed("all vCPUs stopped without a reason")
    }

    /// Ends the VM with `reason` (the first reason wins).
    public func stop(_ reason: MachineOutcome) { lifecycle.stop(reason) }

    var stopping: Bool { lifecycle.outcome != nil }

    private func runVCPU(_ vcpu: VCPU) {
        var settled = false // the last KVM_RUN returned with no exit left to complete
        while !stopping {
            // Park only once KVM_RUN (with immediate_exit set by pause) has completed any I/O in flight,
            // so the saved registers are consistent.
            if settled && gate.isPaused {
                gate.park(stop: stopEvent.raw)
                settled = false
                continue
            }
            let exit: VMExit
            do {
                if !firstRun.exchange(true, ordering: .relaxed) { BootTrace.mark("first-kvm-run") }
                exit = try vcpu.runOnce()
            } catch {
                stop(.failed("vCPU \(vcpu.id): \(error)"))
                return
            }
            settled = false
            switch exit {
            case .io(let access):
                for i in 0..<access.count {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: access.data[i * access.size..<(i + 1) * access.size])
                    bus.handle(port: access.port, isWrite: access.isWrite, data: slice)
                }
            case .mmio(let access):
                virtio.bus.handle(address: access.address, isWrite: access.isWrite, data: access.data)
            case .interrupted:
                settled = true
                continue
            case .systemEvent(let type):
                // KVM_SYSTEM_EVENT_SHUTDOWN (1) and RESET (2) are clean ends; CRASH (3) is not.
                stop(type == 3 ? .guestPanicked : .guestShutdown)
            case .hlt:
                stop(.failed(Diagnostics.describe(exit, vcpu: vcpu, memory: memory)))
            case .shutdown, .internalError, .failEntry, .malformed, .unknown:
                stop(.failed(Diagnostics.describe(exit, vcpu: vcpu, memory: memory)))
            }
        }
    }
}

/// The outcome of loading the kernel on the loader thread.
final class LoadResult: Sendable {
    private let slot = Mutex<Result<LoadedKernel, BootError>?>(nil)

    func run(_ request: BootRequest, into memory: GuestMemory) {
        let r = Result { () throws(BootError) in try Loader.load(request, into: memory) }
        slot.withLock { $0 = r }
    }

    func result(kernelPath: String) throws(MachineError) -> LoadedKernel {
        switch slot.withLock({ $0 }) {
        case .success(let loaded)?: return loaded
        case .failure(let error)?: throw .kernel(path: kernelPath, error)
        case nil: throw .config("the kernel loader did not finish")
        }
    }
}

/// The VM's end: the first reason to stop wins, and every vCPU is kicked out of KVM_RUN.
final class Lifecycle: Sendable {
    private let state = Mutex<MachineOutcome?>(nil)
    private let threads = Mutex<[Thread]>([])
    let vcpus: [VCPU]
    let stopEvent: Int32
    let console: Console

    init(vcpus: [VCPU], stopEvent: Int32, console: Console) {
        self.vcpus = vcpus; self.stopEvent = stopEvent; self.console = console
    }

    var outcome: MachineOutcome? { state.withLock { $0 } }

    func running(_ thread: Thread) { threads.withLock { $0.append(thread) } }

    /// Whether run() has started the vCPU threads.
    var started: Bool { !threads.withLock { $0.isEmpty } }

    /// Interrupts every vCPU thread's KVM_RUN (after `requestExit`), e.g. to pause.
    func kickThreads() { for t in threads.withLock({ $0 }) { t.kill(Machine.kickSignal) } }

    func stop(_ reason: MachineOutcome) {
        let reason = (reason == .guestShutdown && console.sawPanic) ? .guestPanicked : reason
        let first = state.withLock { current -> Bool in
            if current != nil { return false }
            current = reason
            return true
        }
        guard first else { return }
        for vcpu in vcpus { vcpu.requestExit() }
        for t in threads.withLock({ $0 }) { t.kill(Machine.kickSignal) }
        var one: UInt64 = 1
        _ = Glibc.write(stopEvent, &one, 8)
    }
}
