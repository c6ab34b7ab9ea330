import AgentProtocol
import Glibc
import LinuxSys
import Sandbox
import VMM

// Host-side cost of the agent protocol: kiln-agent runs on the host and serves a Unix socket,
// so the numbers are Kiln's own code (client library, framing, agent loop, process spawning)
// without the guest kernel, which this project's CI hosts emulate.

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

func binaryBesideMe(_ name: String) -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    let exe = String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/" + name
}

/// posix_spawn + waitpid of `path`: what starting a process costs without Kiln.
func spawnAndWait(_ path: String) -> Double {
    let start = now()
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
    defer { argv.forEach { free($0) } }
    let envp: [UnsafeMutablePointer<CChar>?] = [nil]
    guard posix_spawn(&pid, path, nil, nil, argv, envp) == 0 else { return .nan }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return now() - start
}

struct AgentNumbers {
    var pingMicros = 0.0, execMicros = 0.0, spawnMicros = 0.0, stdoutMiBps = 0.0, stdinMiBps = 0.0, stdoutBytes = 0
}

/// Measures round trips and throughput on an open agent session. `bigFile` is a file the agent
/// can `cat`; `spawnBaseline` measures local process creation (nil inside a VM).
func measure(_ client: AgentClient, rounds: Int, bigFile: String, stdinBytes: Int, spawnBaseline: Bool) async throws -> AgentNumbers {
    var n = AgentNumbers()
    var pings: [Double] = []
    for i in 0..<(rounds * 10 + 50) {
        let t = now()
        _ = try await client.ping()
        if i >= 50 { pings.append(now() - t) }
    }
    n.pingMicros = median(pings) * 1e6

    var execs: [Double] = [], spawns: [Double] = []
    for i in 0..<(rounds + 5) {
        let t = now()
        let p = try await client.exec(Exec(argv: ["/bin/true"]))
        p.closeStdin()
        _ = try await p.collect()
        if i >= 5 { execs.append(now() - t) }
        if spawnBaseline && i >= 5 { spawns.append(spawnAndWait("/bin/true")) }
    }
    n.execMicros = median(execs) * 1e6
    n.spawnMicros = spawnBaseline ? median(spawns) * 1e6 : .nan

    var t = now()
    let cat = try await client.exec(Exec(argv: ["/bin/cat", bigFile]))
    cat.closeStdin()
    var bytes = 0
    for await chunk in cat.output { if case .stdout(let b) = chunk { bytes += b.count } }
    _ = try await cat.wait()
    n.stdoutBytes = bytes
    n.stdoutMiBps = Double(bytes) / (now() - t) / Double(1 << 20)

    let sink = try await client.exec(Exec(argv: ["/bin/sh", "-c", "cat > /dev/null"], environment: ["PATH=/bin:/usr/bin"]))
    let chunk = [UInt8](repeating: 0x42, count: 1 << 20)
    t = now()
    for _ in 0..<(stdinBytes / chunk.count) { try await sink.write(chunk) }
    sink.closeStdin()
    _ = try await sink.collect()
    n.stdinMiBps = Double(stdinBytes) / (now() - t) / Double(1 << 20)
    return n
}

func runAgentBenchmark() async throws {
    let socket = "/tmp/kiln-bench-agent-\(getpid()).sock"
    let agentPath = binaryBesideMe("kiln-agent")
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup(agentPath), strdup("--listen"), strdup(socket), nil]
    defer { argv.forEach { free($0) } }
    guard posix_spawn(&pid, agentPath, nil, nil, argv, environ) == 0 else { print("cannot start \(agentPath)"); exit(1) }
    defer { kill(pid, SIGKILL); waitpid(pid, nil, 0); unlink(socket) }
    for _ in 0..<500 where access(socket, F_OK) != 0 { usleep(10_000) }
    let fd = try UnixSocket.connect(path: socket)
    let client = try AgentClient(socket: fd, software: "kiln-bench")

    let file = "/tmp/kiln-bench-\(getpid()).dat"
    let size = 1 << 30
    let out = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let block = [UInt8](repeating: 0x61, count: 1 << 20)
    for _ in 0..<(size / block.count) { _ = block.withUnsafeBytes { write(out, $0.baseAddress, $0.count) } }
    close(out)
    defer { unlink(file) }

    let n = try await measure(client, rounds: 300, bigFile: file, stdinBytes: 1 << 30, spawnBaseline: true)
    print("| agent protocol on the host (kiln-agent on a Unix socket) | value |")
    print("|---|---:|")
    print("| ping round trip, median | \(Int(n.pingMicros)) µs |")
    print("| exec `/bin/true` round trip (Exec → Started → Exit), median | \(Int(n.execMicros)) µs |")
    print("| posix_spawn + waitpid of `/bin/true` alone, median | \(Int(n.spawnMicros)) µs |")
    print("| Kiln's share of an exec round trip (difference) | \(Int(n.execMicros - n.spawnMicros)) µs |")
    print("| stdout throughput, `cat` of a 1 GiB file | \(Int(n.stdoutMiBps)) MiB/s |")
    print("| stdin throughput, 1 GiB into `cat > /dev/null` | \(Int(n.stdinMiBps)) MiB/s |")
}

/// The same measurements through a real sandbox, plus the boot breakdown.
func runSandboxBenchmark() async throws {
    let kernel = "/var/cache/kiln/kernel/vmlinux", image = "/var/cache/kiln/images/default.ext4"
    var config = Sandbox.Configuration(kernelPath: kernel, imagePath: image)
    config.runtimeDirectory = "/tmp/kiln-bench-\(getpid())"
    let start = now()
    let sandbox = try await Sandbox.start(config)
    let ready = now() - start
    defer { sandbox.stop() }
    // A 32 MiB file in the guest's tmpfs to cat (made by dd, outside the measurement).
    let mk = try await sandbox.agent.exec(Exec(argv: ["/bin/dd", "if=/dev/zero", "of=/tmp/big", "bs=1048576", "count=32"]))
    mk.closeStdin()
    _ = try await mk.collect()
    let n = try await measure(sandbox.agent, rounds: 10, bigFile: "/tmp/big", stdinBytes: 8 << 20, spawnBaseline: false)
    print("| agent through a sandbox (guest kernel emulated on this host) | value |")
    print("|---|---:|")
    print("| `Sandbox.start` to agent ready (boot + handshake) | \(String(format1(ready))) s |")
    print("| ping round trip, median | \(Int(n.pingMicros)) µs |")
    print("| exec `/bin/true` round trip, median of 10 | \(Int(n.execMicros / 1000)) ms |")
    print("| stdout throughput, `cat` of a 32 MiB tmpfs file | \(String(format1(n.stdoutMiBps))) MiB/s |")
    print("| stdin throughput, 8 MiB into `cat > /dev/null` | \(String(format1(n.stdinMiBps))) MiB/s |")
}

func format1(_ x: Double) -> String {
    let r = (x * 10).rounded() / 10
    return String(r)
}
