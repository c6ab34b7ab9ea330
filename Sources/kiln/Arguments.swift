/// A small command-line parser: `--name value`, `--name=value` and flags.
struct Arguments {
    private(set) var values: [String: [String]] = [:]
    private(set) var flags: Set<String> = []

    struct Failure: Error { let message: String }

    /// Parses `args` against the options that take a value and the flags allowed.
    init(_ args: ArraySlice<String>, options: Set<String>, flags allowedFlags: Set<String>) throws(Failure) {
        var i = args.startIndex
        while i < args.endIndex {
            let arg = args[i]
            guard arg.hasPrefix("--") else { throw Failure(message: "unexpected argument '\(arg)'") }
            var name = String(arg.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            if allowedFlags.contains(name) {
                guard value == nil else { throw Failure(message: "--\(name) takes no value") }
                flags.insert(name)
            } else if options.contains(name) {
                if value == nil {
                    i += 1
                    guard i < args.endIndex else { throw Failure(message: "--\(name) needs a value") }
                    value = args[i]
                }
                values[name, default: []].append(value!)
            } else {
                throw Failure(message: "unknown option --\(name)")
            }
            i += 1
        }
    }

    /// The last value given for `name`.
    func string(_ name: String) -> String? { values[name]?.last }

    /// Every value given for a repeatable option, in order.
    func all(_ name: String) -> [String] { values[name] ?? [] }

    func int(_ name: String, default def: Int) throws(Failure) -> Int {
        guard let s = values[name]?.last else { return def }
        guard let v = Int(s) else { throw Failure(message: "--\(name) needs a whole number, got '\(s)'") }
        return v
    }
}
