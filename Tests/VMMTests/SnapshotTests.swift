import Devices
import Glibc
import KVM
import KilnTestSupport
import LinuxSys
import Testing
@testable import VMM

/// A guest that prints A, B, C, ... on COM1 forever, with a busy loop between letters.
/// 32- and 64-bit clean; the letter lives in AL, so a restored guest must continue the sequence.
let alphabetGuest: [UInt8] = [0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
                              0xB0, 0x41] // mov al, 'A'
    + [0xEE, // loop: out dx, al
       0xFE, 0xC0, // inc al
       0xB9] + TinyKernels.le32(100_000) // mov ecx, 100000
    + [0xFF, 0xC9, 0x75, 0xFC, // dec ecx; jnz -4
       0xEB, 0xF2] // jmp loop

/// Collects what a guest prints on a non-blocking pipe.
final class PipeReader {
    let read: Int32, write: Int32
    var bytes: [UInt8] = []
    init() {
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        read = fds[0]; write = fds[1]
        _ = fcntl(read, F_SETFL, O_NONBLOCK)
    }
    deinit { close(read); close(write) }
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = Glibc.read(read, &buffer, buffer.count)
            if n <= 0 { return }
            bytes += buffer[0..<n]
        }
    }
    /// Drains until `count` bytes arrived or 60 s passed.
    func wait(for count: Int) {
        for _ in 0..<60_000 where bytes.count < count { drain(); usleep(1000) }
    }
}

@Suite(.serialized, .blocking) struct SnapshotStateTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    func runInBackground(_ machine: Machine) throws -> Thread {
        try Thread.spawn(name: "test-machine") { _ = machine.run() }
    }

    @Test func restoredGuestContinuesWhereItWasPaused() throws {
        let dir = "/tmp/kiln-vmm-snapshot-\(getpid())"
        defer { _ = system("rm -rf \(dir)") }
        let kernel = temporaryFile(TinyKernels.elf(code: alphabetGuest), name: "alphabet")
        defer { unlink(kernel) }
        let out = PipeReader()
        let machine = try Machine(MachineConfig(kernelPath: kernel, cmdline: "", memoryMiB: 64, consoleInput: nil, consoleOutput: out.write))
        let thread = try runInBackground(machine)
        out.wait(for: 3)
        try machine.pause()
        #expect(machine.isPaused)
        out.drain()
        let printed = out.bytes.count
        usleep(300_000)
        out.drain()
        #expect(out.bytes.count == printed, "a paused guest printed \(out.bytes.count - printed) more bytes")
        let summary = try machine.snapshot(to: dir)
        #expect(summary.memoryBytes == 64 << 20)
        #expect(summary.memoryBytesWritten < 1 << 20) // the rest is holes: this guest touched a few pages
        #expect(machine.isPaused) // snapshot leaves a paused VM paused
        let last = out.bytes.last!
        try machine.resume()
        out.wait(for: printed + 2)
        #expect(out.bytes[printed] == last &+ 1) // the original goes on
        machine.stop(.userQuit)
        thread.join()

        // Two clones from the same snapshot each continue with the letter after `last`.
        for _ in 0..<2 {
            let cloneOut = PipeReader()
            let clone = try Machine(restoring: dir, overrides: RestoreOverrides(consoleInput: nil, consoleOutput: cloneOut.write))
            let t = try runInBackground(clone)
            cloneOut.wait(for: 2)
            clone.stop(.userQuit)
            t.join()
            #expect(Array(cloneOut.bytes.prefix(2)) == [last &+ 1, last &+ 2])
        }
    }

    func sampleState(profile: HostProfile) -> SnapshotState {
        var config = MachineConfig(kernelPath: "/k", initrdPath: "/i", cmdline: "console=ttyS0", cpus: 1, memoryMiB: 64, hostProfile: profile)
        config.vsock = .init(path: "/tmp/v.sock", guestCID: 7)
        config.disks = [.init(path: "/d.img", overlay: true)]
        let cpu = VCPUState(mpState: [1, 0, 0, 0], regs: [2, 3], sregs: [4], fpu: [5], xsave: nil, xcrs: [6], debugRegs: nil,
                            lapic: [7], msrs: [MSR(index: 0x10, value: 1234)], events: [8])
        let queue = Virtqueue(size: 128, ready: true, descriptorTable: 0x1000, availableRing: 0x2000, usedRing: 0x3000,
                              eventIndex: true, lastAvailable: 5, nextUsed: 4, signalledUsed: 3)
        return SnapshotState(kilnVersion: kilnVersion, hostProfile: profile, config: config,
                             memory: [.init(base: 0, size: 64 << 20, fileOffset: 0)], memoryFileSize: 64 << 20,
                             vm: VMState(picMaster: [1], picSlave: [2], ioapic: [3], pit: [4], clock: [5]), vcpus: [cpu],
                             serial: Serial.SavedState(ier: 1, lcr: 3, mcr: 8, scr: 0, dll: 12, dlm: 0, fifoEnabled: true,
                                                       thrEmptyPending: false, rx: [65]),
                             devices: [.init(deviceID: 2, transport: .init(status: 15, deviceFeaturesSelect: 1, driverFeaturesSelect: 1,
                                                                           driverFeatures: 1 << 32, queueSelect: 0, interruptStatus: 0,
                                                                           configGeneration: 0, active: true, queues: [queue]))],
                             layers: [.init(slot: 0, bitmap: [0b1011, 0, 1 << 63])])
    }

    @Test func stateFileRoundTripsAndRefusesDamage() throws {
        var state = sampleState(profile: .kvm)
        // A vsock device in slot 1 with one saved connection, credit state and a queued control packet.
        state.devices.append(.init(deviceID: 19, transport: state.devices[0].transport))
        let connection = VsockSavedState.Connection(hostPort: 1024, guestPort: 1024, hostInitiated: true, txCnt: 70, rxCnt: 900,
                                                    fwdCnt: 880, advertisedFwdCnt: 870, peerBufAlloc: 262_144, peerFwdCnt: 60,
                                                    flags: [.guestShutReceive], toGuest: [1, 2], toHost: Array(repeating: 9, count: 20))
        state.vsock = [.init(slot: 1, state: VsockSavedState(guestCID: 7, nextPort: 1025, connections: [connection],
                                                             control: [VsockHeader(srcCID: 2, dstCID: 7, srcPort: 1024, dstPort: 1024, op: .creditUpdate)]))]
        let bytes = state.encoded()
        #expect(try SnapshotState.decode(bytes) == state)
        #expect(try SnapshotState.decode(bytes).config.disks == [.init(path: "/d.img", overlay: true)])

        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x01
        #expect(throws: SnapshotState.LoadError.checksum) { try SnapshotState.decode(flipped) }
        #expect(throws: SnapshotState.LoadError.truncated(expected: bytes.count, got: bytes.count - 1)) {
            try SnapshotState.decode(Array(bytes.dropLast()))
        }
        var newer = bytes
        newer[8] = 3
        #expect(throws: SnapshotState.LoadError.version(found: 3)) { try SnapshotState.decode(newer) }
        // Version 1 (before the vsock connections were saved) is refused with one line.
        var older = bytes
        older[8] = 1
        #expect(throws: SnapshotState.LoadError.version(found: 1)) { try SnapshotState.decode(older) }
        #expect(SnapshotState.LoadError.version(found: 1).description
                == "snapshot format version 1 is not supported by this Kiln (\(kilnVersion) reads version 2); make the snapshot again")
        #expect(throws: SnapshotState.LoadError.notASnapshot) { try SnapshotState.decode(Array("hello".utf8)) }
    }

    /// The fuzzer's seed (Fuzz/seeds/FuzzSnapshot) is a state file of the current version, with a
    /// kept vsock connection, so that mutations start from the parser's whole path.
    @Test func fuzzSeedIsACurrentStateFile() throws {
        var root = #filePath
        for _ in 0..<3 { root = String(root[..<root.lastIndex(of: "/")!]) }
        let bytes = try readWholeFile(root + "/Fuzz/seeds/FuzzSnapshot/vsock-guest.state")
        let state = try SnapshotState.decode(bytes)
        #expect(state.vsock.first?.state.connections.first?.guestPort == 1024)
        #expect(state.vsock.first?.state.control.first?.knownOp == .creditUpdate)
    }

    @Test func snapshotFromAnotherHostProfileIsRefusedBeforeAnythingIsBuilt() throws {
        let dir = "/tmp/kiln-vmm-profile-\(getpid())"
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf \(dir)") }
        let here = HostProfile.detect()
        let other: HostProfile = here == .kvm ? .emulatedCPL0 : .kvm
        let bytes = sampleState(profile: other).encoded()
        let fd = open("\(dir)/state", O_WRONLY | O_CREAT, 0o600)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        do {
            _ = try Machine(restoring: dir)
            Issue.record("restored a snapshot from another host profile")
        } catch {
            #expect(error.description == "snapshot \(dir): made on a host with profile \(other.rawValue); this host is \(here.rawValue)")
        }
    }
}
