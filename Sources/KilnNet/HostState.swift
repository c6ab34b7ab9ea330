import Glibc

/// Small file helpers (this target links neither Foundation nor the Jailer's).
enum Files {
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func write(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    static func list(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

extension String {
    func trimmed() -> String {
        String(self.drop { $0 == " " || $0 == "\n" || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\n" || $0 == "\t" }.reversed())
    }
}

/// The calling process's IPv4 routes and interfaces (/proc/net/route, /sys/class/net).
enum Routes {
    struct Route { let device: String; let range: IPv4Range }

    static func read() -> [Route] {
        (Files.read("/proc/net/route") ?? "").split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 8, let dest = UInt32(f[1], radix: 16), let mask = UInt32(f[7], radix: 16) else { return nil }
            // The file holds addresses in host byte order of a little-endian machine's network bytes.
            let d = UInt32(bigEndian: dest), m = UInt32(bigEndian: mask)
            return Route(device: String(f[0]), range: IPv4Range(base: d, prefix: m.nonzeroBitCount))
        }
    }

    static func interfaces() -> [String] { Files.list("/sys/class/net") }
}

/// The host's own IPv4 addresses (every interface's), which a sandbox must not reach.
enum HostAddresses {
    static func ipv4() -> [UInt32] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: [UInt32] = []
        var p = list
        while let entry = p {
            if let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) {
                let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                if !out.contains(a) { out.append(a) }
            }
            p = entry.pointee.ifa_next
        }
        return out
    }
}

/// The host's DNS server for the guests: the first IPv4 `nameserver` of /etc/resolv.conf that is
/// not on loopback (a stub resolver on 127.0.0.53 cannot be reached from a namespace).
enum Resolver {
    static func upstream() -> UInt32? {
        // A test's fake internet (or a host whose resolver is on a loopback stub) names its own.
        if let p = getenv("KILN_NET_RESOLVER"), let a = IPv4Range.parseAddress(String(cString: p)) { return a }
        for line in (Files.read("/etc/resolv.conf") ?? "").split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 2, f[0] == "nameserver", let a = IPv4Range.parseAddress(String(f[1])) else { continue }
            if a >> 24 != 127 { return a }
        }
        return nil
    }
}
