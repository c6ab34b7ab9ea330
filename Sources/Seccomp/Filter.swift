import CSandbox

/// A policy compiled to classic BPF for seccomp: the arch is checked first (another ABI kills
/// the process, whatever the mode), then the system call number, then the rule's arguments.
public struct Filter: Sendable {
    public let instructions: [sock_filter]

    public struct CompileError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Compiles `policy`; a call it does not allow gets `defaultAction` (a SECCOMP_RET_ value).
    public init(_ policy: Policy, defaultAction: UInt32) throws(CompileError) {
        var a = Assembler()
        // The kills come right after their checks: jumps are forward and at most 255 long, so a
        // kill at the end would bound the whole filter (the service policy is longer than that).
        let archOK = a.newLabel(), numberOK = a.newLabel()
        a.load(KILN_SECCOMP_DATA_ARCH)
        a.jump(ifEqual: KILN_AUDIT_ARCH_X86_64, then: archOK, else: nil)
        a.ret(KILN_SECCOMP_RET_KILL_PROCESS)
        a.place(archOK)
        a.load(KILN_SECCOMP_DATA_NR)
        a.jump(ifAtLeast: KILN_X32_SYSCALL_BIT, then: nil, else: numberOK)
        a.ret(KILN_SECCOMP_RET_KILL_PROCESS)
        a.place(numberOK)

        // One block per system call, in the order the policy first names it.
        var order: [Int32] = [], byNumber: [Int32: [Policy.Rule]] = [:]
        for rule in policy.rules {
            if byNumber[rule.number] == nil { order.append(rule.number) }
            byNumber[rule.number, default: []].append(rule)
        }
        for number in order {
            let next = a.newLabel()
            a.jump(ifEqual: UInt32(bitPattern: number), then: nil, else: next)
            Filter.emitBlock(byNumber[number]!, defaultAction: defaultAction, into: &a)
            a.place(next)
        }
        a.ret(defaultAction)
        instructions = try a.assemble()
        guard instructions.count <= Int(KILN_BPF_MAXINSNS) else {
            throw CompileError(description: "the filter has \(instructions.count) instructions, more than \(KILN_BPF_MAXINSNS)")
        }
    }

    static func action(_ rule: Policy.Rule) -> UInt32 {
        rule.errno.map { KILN_SECCOMP_RET_ERRNO | UInt32($0) } ?? KILN_SECCOMP_RET_ALLOW
    }

    /// The rules of one system call; A holds its number on entry, and every path returns.
    static func emitBlock(_ rules: [Policy.Rule], defaultAction: UInt32, into a: inout Assembler) {
        if let any = rules.first(where: { $0.conditions.isEmpty }) {
            a.ret(action(any))
            return
        }
        var i = 0
        while i < rules.count {
            let first = rules[i]
            if first.conditions.count == 1 {
                // A run of one-condition rules on the same argument and mask with the same action
                // (an ioctl's request list) loads the argument once.
                let c = first.conditions[0]
                var j = i + 1
                while j < rules.count, rules[j].conditions.count == 1, rules[j].conditions[0].argument == c.argument,
                      rules[j].conditions[0].mask == c.mask, action(rules[j]) == action(first) { j += 1 }
                let matched = a.newLabel(), end = a.newLabel()
                a.load(argument: c.argument)
                if let mask = c.mask { a.and(mask) }
                for k in i..<j {
                    a.jump(ifEqual: rules[k].conditions[0].value, then: matched, else: k == j - 1 ? end : nil)
                }
                a.place(matched)
                a.ret(action(first))
                a.place(end)
                i = j
            } else {
                let end = a.newLabel()
                for c in first.conditions {
                    a.load(argument: c.argument)
                    if let mask = c.mask { a.and(mask) }
                    a.jump(ifEqual: c.value, then: nil, else: end)
                }
                a.ret(action(first))
                a.place(end)
                i += 1
            }
        }
        a.ret(defaultAction)
    }
}

/// Classic BPF with forward labels, resolved to the 8-bit relative jumps seccomp takes.
struct Assembler {
    typealias Label = Int
    private enum Op {
        case plain(UInt16, UInt32)
        case jump(UInt16, UInt32, then: Label?, else: Label?) // nil: the next instruction
        case label(Label)
    }
    private var ops: [Op] = []
    private var labels = 0

    // Opcodes from linux/filter.h (the macros do not import into Swift).
    static let ldAbs: UInt16 = 0x20   // BPF_LD | BPF_W | BPF_ABS
    static let andK: UInt16 = 0x54    // BPF_ALU | BPF_AND | BPF_K
    static let jeqK: UInt16 = 0x15    // BPF_JMP | BPF_JEQ | BPF_K
    static let jgeK: UInt16 = 0x35    // BPF_JMP | BPF_JGE | BPF_K
    static let retK: UInt16 = 0x06    // BPF_RET | BPF_K

    mutating func newLabel() -> Label { labels += 1; return labels }
    mutating func place(_ label: Label) { ops.append(.label(label)) }
    mutating func load(_ offset: UInt32) { ops.append(.plain(Assembler.ldAbs, offset)) }
    /// The low 32 bits of system call argument `argument` (x86_64 is little-endian).
    mutating func load(argument: Int) { load(KILN_SECCOMP_DATA_ARGS + UInt32(argument) * 8) }
    mutating func and(_ mask: UInt32) { ops.append(.plain(Assembler.andK, mask)) }
    mutating func ret(_ value: UInt32) { ops.append(.plain(Assembler.retK, value)) }
    mutating func jump(ifEqual value: UInt32, then t: Label?, else f: Label?) {
        ops.append(.jump(Assembler.jeqK, value, then: t, else: f))
    }
    mutating func jump(ifAtLeast value: UInt32, then t: Label?, else f: Label?) {
        ops.append(.jump(Assembler.jgeK, value, then: t, else: f))
    }

    func assemble() throws(Filter.CompileError) -> [sock_filter] {
        var position: [Label: Int] = [:], pc = 0
        for op in ops {
            if case .label(let l) = op { position[l] = pc } else { pc += 1 }
        }
        var out: [sock_filter] = []
        for op in ops {
            switch op {
            case .label: continue
            case .plain(let code, let k):
                out.append(sock_filter(code: code, jt: 0, jf: 0, k: k))
            case .jump(let code, let k, let t, let f):
                let here = out.count
                func offset(_ label: Label?) throws(Filter.CompileError) -> UInt8 {
                    guard let label else { return 0 }
                    let distance = position[label]! - here - 1
                    guard (0...255).contains(distance) else {
                        throw Filter.CompileError(description: "a jump of \(distance) instructions does not fit (at most 255)")
                    }
                    return UInt8(distance)
                }
                out.append(sock_filter(code: code, jt: try offset(t), jf: try offset(f), k: k))
            }
        }
        return out
    }
}
