import CLinux
import Glibc

/// A network namespace of a test's own (`ip netns add`), deleted by `delete()` or at deinit,
/// so that a test's TAP, addresses and sockets never touch the machine's real network.
public final class NetNamespace {
    public let name: String
    private var deleted = false

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public init(name: String) throws {
        self.name = name
        try NetNamespace.ip(["netns", "add", name])
        try NetNamespace.ip(["-n", name, "link", "set", "lo", "up"])
    }

    deinit { delete() }

    public func delete() {
        if deleted { return }
        deleted = true
        try? NetNamespace.ip(["netns", "del", name])
    }

    /// The argument list that runs `command` inside the namespace (for `KilnProcess(executable: "ip")`).
    public func exec(_ command: [String]) -> [String] { ["netns", "exec", name] + command }

    /// Runs `body` on a new OS thread that has joined the namespace (a namespace is per thread,
    /// so the test's own threads stay where they are). Sockets it creates keep the namespace.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let fd = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot open /run/netns/\(name): errno \(errno)") }
        defer { close(fd) }
        let job = Job(fd: fd) { try body() }
        var thread = pthread_t()
        let raw = Unmanaged.passRetained(job).toOpaque()
        guard pthread_create(&thread, nil, { raw in
            let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
            if kiln_setns_net(job.fd) != 0 {
                job.result = .failure(Failure(description: "setns: errno \(errno)"))
            } else {
                job.result = Result { try job.body() }
            }
            return nil
        }, raw) == 0 else {
            Unmanaged<Job>.fromOpaque(raw).release()
            throw Failure(description: "pthread_create failed")
        }
        pthread_join(thread, nil)
        switch job.result! {
        case .success(let value): return value as! T
        case .failure(let error): throw error
        }
    }

    /// One call of `run`, handed to the thread; `result` is read only after the join.
    private final class Job: @unchecked Sendable {
        let fd: Int32
        let body: () throws -> any Sendable
        var result: Result<any Sendable, any Error>?
        init(fd: Int32, body: @escaping () throws -> any Sendable) { self.fd = fd; self.body = body }
    }

    static func ip(_ args: [String]) throws {
        let process = try KilnProcess(args, executable: "ip")
        process.closeInput()
        let status = try process.wait(seconds: 30)
        guard status == 0 else { throw Failure(description: "ip \(args.joined(separator: " ")) exited with \(status): \(process.errorOutput)") }
    }
}

/// Blocking IPv4 TCP helpers with deadlines, for talking to a guest.
public enum TCP {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    static func address(_ ip: String, _ port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        inet_pton(AF_INET, ip, &a.sin_addr)
        return a
    }

    /// A socket listening on `port` on every address of the calling thread's namespace.
    public static func listen(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = address("0.0.0.0", port)
        let bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, bound == 0, Glibc.listen(fd, 4) == 0 else { throw Failure(description: "listen on \(port): errno \(errno)") }
        return fd
    }

    /// Waits up to `seconds` for a connection on `listener`.
    public static func accept(_ listener: Int32, seconds: Double) throws -> Int32 {
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(seconds * 1000)) == 1 else { throw Failure(description: "no connection within \(seconds) s") }
        let fd = Glibc.accept(listener, nil, nil)
        guard fd >= 0 else { throw Failure(description: "accept: errno \(errno)") }
        return fd
    }

    /// Connects to `ip:port`, retrying refused connections until `seconds` pass.
    public static func connect(_ ip: String, _ port: UInt16, seconds: Double) throws -> Int32 {
        let deadline = time(nil) + Int(seconds)
        while true {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var a = address(ip, port)
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc == 0 { return fd }
            let e = errno
            close(fd)
            guard time(nil) < deadline else { throw Failure(description: "connect \(ip):\(port): errno \(e)") }
            sleep(1)
        }
    }

    /// Reads until `count` bytes, end of stream, or `seconds` pass.
    public static func read(_ fd: Int32, upTo count: Int, seconds: Double) -> [UInt8] {
        var out: [UInt8] = []
        let deadline = time(nil) + Int(seconds)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < count, time(nil) < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 1000) >= 0 else { break }
            if p.revents == 0 { continue }
            let n = Glibc.read(fd, &buffer, min(buffer.count, count - out.count))
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return out
    }

    public static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}
