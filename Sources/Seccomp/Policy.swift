import CSandbox

/// A parsed seccomp policy: the system calls one kind of thread may make.
///
/// The text format (Security/seccomp/*.policy), one rule per line, `#` starts a comment:
///
///     read                               # allowed with any arguments
///     ioctl KVM_RUN                      # ioctl whose request (arg1) is KVM_RUN
///     socket arg0 == AF_UNIX             # an argument equals a value
///     mmap arg2 & PROT_EXEC == 0         # an argument, masked, equals a value
///     socket arg0 == AF_UNIX, arg1 & SOCK_DGRAM == 0   # conditions joined by commas all hold
///     openat errno EACCES                # refused with an error instead of killing the process
///
/// Several lines for one system call are alternatives. Conditions compare the low 32 bits of an
/// argument, so they are only used on `int`-sized arguments (ioctl requests, flags, families).
/// Values are numbers or names from CSandbox's constant table, joined with `|`. The order of the
/// system calls is the order the filter tests them in: put the hot ones first.
public struct Policy: Sendable, Equatable {
    public struct Condition: Sendable, Equatable {
        public var argument: Int
        public var mask: UInt32?
        public var value: UInt32
    }
    public struct Rule: Sendable, Equatable {
        public var syscall: String
        public var number: Int32
        /// Empty: any arguments.
        public var conditions: [Condition]
        /// nil: the call is allowed; otherwise it fails with this errno.
        public var errno: UInt16?
    }

    public var rules: [Rule]

    /// The system calls this policy allows in some form, in filter order, without repeats.
    public var syscalls: [String] {
        var seen: Set<String> = [], names: [String] = []
        for r in rules where r.errno == nil && seen.insert(r.syscall).inserted { names.append(r.syscall) }
        return names
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let line: Int
        public let message: String
        public var description: String { "line \(line): \(message)" }
    }

    public init(parsing text: String) throws(ParseError) {
        var rules: [Rule] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let name = words.first else { continue }
            guard let number = syscallNumbers[name] else {
                throw ParseError(line: lineNumber, message: "unknown x86_64 system call '\(name)'")
            }
            var conditions: [Condition] = []
            var errno: UInt16?
            let rest = words.dropFirst()
            if rest.count == 2, rest[rest.startIndex] == "errno" {
                let value = try Policy.value(rest[rest.startIndex + 1], line: lineNumber)
                guard value > 0, value < 4096 else { throw ParseError(line: lineNumber, message: "errno out of range") }
                errno = UInt16(value)
            } else if name == "ioctl", rest.count == 1, !rest[rest.startIndex].hasPrefix("arg") {
                // `ioctl NAME` is short for `ioctl arg1 == NAME`.
                conditions = [Condition(argument: 1, mask: nil, value: try Policy.value(rest[rest.startIndex], line: lineNumber))]
            } else if !rest.isEmpty {
                for clause in rest.joined(separator: " ").split(separator: ",") {
                    conditions.append(try Policy.condition(clause.split(separator: " ").map(String.init), line: lineNumber))
                }
            }
            rules.append(Rule(syscall: name, number: number, conditions: conditions, errno: errno))
        }
        self.rules = rules
    }

    /// `argN == V` or `argN & M == V`.
    static func condition(_ w: [String], line: Int) throws(ParseError) -> Condition {
        func argument(_ s: String) throws(ParseError) -> Int {
            guard s.hasPrefix("arg"), let n = Int(s.dropFirst(3)), (0...5).contains(n) else {
                throw ParseError(line: line, message: "expected arg0...arg5, got '\(s)'")
            }
            return n
        }
        if w.count == 3, w[1] == "==" {
            return Condition(argument: try argument(w[0]), mask: nil, value: try value(w[2], line: line))
        }
        if w.count == 5, w[1] == "&", w[3] == "==" {
            return Condition(argument: try argument(w[0]), mask: try value(w[2], line: line), value: try value(w[4], line: line))
        }
        throw ParseError(line: line, message: "expected 'argN == VALUE' or 'argN & MASK == VALUE', got '\(w.joined(separator: " "))'")
    }

    /// A number (decimal or 0x hex) or named constants joined by `|`; only the low 32 bits count.
    static func value(_ s: String, line: Int) throws(ParseError) -> UInt32 {
        var result: UInt64 = 0
        for part in s.split(separator: "|") {
            if let n = part.hasPrefix("0x") ? UInt64(part.dropFirst(2), radix: 16) : UInt64(part) {
                result |= n
            } else if let n = policyConstants[String(part)] {
                result |= n
            } else {
                throw ParseError(line: line, message: "unknown constant '\(part)'")
            }
        }
        return UInt32(truncatingIfNeeded: result)
    }
}

/// CSandbox's named constants by name.
let policyConstants: [String: UInt64] = {
    var table: [String: UInt64] = [:]
    for i in 0..<kiln_policy_constant_count() {
        let entry = kiln_policy_constant_at(i)
        table[String(cString: entry.name)] = entry.value
    }
    return table
}()
