import CKVM
import Testing
@testable import KVM

/// Builds a fake kvm_run area to decode.
func withRun(_ body: (UnsafeMutablePointer<kvm_run>, UnsafeMutableRawPointer, Int) -> Void) {
    let size = 3 * 4096
    let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
    defer { raw.deallocate() }
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    body(raw.assumingMemoryBound(to: kvm_run.self), raw, size)
}

@Suite struct VMExitTests {
    @Test func decodesPortOutput() {
        withRun { run, raw, size in
            run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
            run.pointee.io.direction = UInt8(KVM_EXIT_IO_OUT)
            run.pointee.io.size = 1
            run.pointee.io.port = 0x3F8
            run.pointee.io.count = 3
            run.pointee.io.data_offset = 0x1000
            (raw + 0x1000).copyMemory(from: [UInt8]("abc".utf8), byteCount: 3)
            guard case .io(let a) = VMExit.decode(run: raw, size: size) else { Issue.record("not io"); return }
            #expect(a.port == 0x3F8 && a.isWrite && a.size == 1 && a.count == 3)
            #expect(Array(a.data) == Array("abc".utf8))
        }
    }

    @Test func portDataOutsideTheRunAreaIsMalformed() {
        withRun { run, raw, size in
            run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
            run.pointee.io.size = 4
            run.pointee.io.count = 2
            run.pointee.io.data_offset = UInt64(size - 4)
            guard case .malformed = VMExit.decode(run: raw, size: size) else { Issue.record("accepted"); return }
            run.pointee.io.data_offset = 0 // inside the header itself
            guard case .malformed = VMExit.decode(run: raw, size: size) else { Issue.record("accepted"); return }
            run.pointee.io.data_offset = 0x1000
            run.pointee.io.size = 3
            guard case .malformed = VMExit.decode(run: raw, size: size) else { Issue.record("size 3 accepted"); return }
        }
    }

    @Test func decodesMMIOAndRejectsBadLength() {
        withRun { run, raw, size in
            run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
            run.pointee.mmio.phys_addr = 0xD000_0000
            run.pointee.mmio.len = 4
            run.pointee.mmio.is_write = 0
            guard case .mmio(let m) = VMExit.decode(run: raw, size: size) else { Issue.record("not mmio"); return }
            #expect(m.address == 0xD000_0000 && !m.isWrite && m.data.count == 4)
            run.pointee.mmio.len = 9
            guard case .malformed = VMExit.decode(run: raw, size: size) else { Issue.record("len 9 accepted"); return }
        }
    }

    @Test func decodesInternalErrorData() {
        withRun { run, raw, size in
            run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
            run.pointee.internal.suberror = UInt32(KVM_INTERNAL_ERROR_EMULATION)
            run.pointee.internal.ndata = 3
            run.pointee.internal.data.0 = 1
            run.pointee.internal.data.1 = 0x0F0B_0002
            guard case .internalError(let sub, let data) = VMExit.decode(run: raw, size: size) else {
                Issue.record("not internal error"); return
            }
            #expect(sub == 1)
            #expect(data == [1, 0x0F0B_0002, 0])
            #expect(internalErrorName(sub) == "emulation failure")
        }
    }

    @Test func decodesSimpleExits() {
        withRun { run, raw, size in
            let cases: [(Int32, String)] = [
                (KVM_EXIT_HLT, "KVM_EXIT_HLT"), (KVM_EXIT_SHUTDOWN, "KVM_EXIT_SHUTDOWN (triple fault)"),
                (KVM_EXIT_FAIL_ENTRY, "KVM_EXIT_FAIL_ENTRY"), (KVM_EXIT_INTR, "KVM_EXIT_INTR"), (999, "unknown exit 999"),
            ]
            for (reason, name) in cases {
                run.pointee.exit_reason = UInt32(reason)
                #expect(VMExit.decode(run: raw, size: size).name == name)
            }
        }
    }
}

@Suite struct KVMSystemTests {
    @Test func missingDeviceIsExplained() {
        #expect {
            _ = try KVMSystem(path: "/nonexistent/kvm")
        } throws: { error in
            "\(error)".hasPrefix("/nonexistent/kvm does not exist: this machine has no KVM")
        }
    }

    @Test func openingTheRealDeviceChecksVersionAndCapabilities() throws {
        let kvm = try KVMSystem()
        #expect(kvm.vcpuMapSize >= 4096)
        #expect(try kvm.supportedCPUID().contains { $0.function == 1 })
    }
}
