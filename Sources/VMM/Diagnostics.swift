import GuestMemory
import KVM

/// One-line descriptions of exits that end a VM: the exit, RIP and, where KVM gives
/// them, the instruction bytes it could not handle.
enum Diagnostics {
    static func describe(_ exit: VMExit, vcpu: VCPU, memory: GuestMemory) -> String {
        let rip = (try? vcpu.registers().rip).map { " at RIP 0x\(String($0, radix: 16))" } ?? ""
        switch exit {
        case .internalError(let sub, let data):
            var text = "\(exit.name) (\(internalErrorName(sub)))\(rip) on vCPU \(vcpu.id)"
            if let bytes = instructionBytes(suberror: sub, data: data) {
                text += ", instruction bytes: " + bytes.map { hex($0) }.joined(separator: " ")
            } else if !data.isEmpty {
                text += ", data: " + data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            }
            return text
        case .failEntry(let reason, let cpu):
            return "\(exit.name) (hardware reason 0x\(String(reason, radix: 16)), cpu \(cpu))\(rip) on vCPU \(vcpu.id)"
        case .hlt:
            return "the guest halted with interrupts off\(rip) on vCPU \(vcpu.id) (poweroff without ACPI? use reboot under reboot=k)"
        default:
            return "\(exit.name)\(rip) on vCPU \(vcpu.id)"
        }
    }

    /// KVM's `struct emulation_failure` overlay: data[0] flags (bit 0: bytes valid), then
    /// insn_size (one byte) and up to 15 instruction bytes packed from data[1] on.
    static func instructionBytes(suberror: UInt32, data: [UInt64]) -> [UInt8]? {
        guard suberror == 1, data.count >= 2, data[0] & 1 != 0 else { return nil }
        var packed: [UInt8] = []
        for word in data[1...] { for i in 0..<8 { packed.append(UInt8(truncatingIfNeeded: word >> (8 * UInt64(i)))) } }
        let length = min(Int(packed[0]), 15, packed.count - 1)
        guard length > 0 else { return nil }
        return Array(packed[1...length])
    }

    static func hex(_ b: UInt8) -> String { b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16) }
}
