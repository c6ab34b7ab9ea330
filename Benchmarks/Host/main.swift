import Devices
import Glibc
import GuestMemory
import LinuxSys

// Host-side cost of Kiln's devices, driven from fake guest memory so that the numbers do not
// depend on the guest kernel (which this project's CI hosts run in an emulator).
//   swift run -c release kiln-bench

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A minimal guest driver: one queue of `size` entries, requests of one data buffer each.
struct Driver {
    let memory: GuestMemory
    let size: UInt16 = 256
    let table: UInt64 = 0x1000, avail: UInt64 = 0x4000, used: UInt64 = 0x5000
    let headers: UInt64 = 0x10000 // 256 * 16 bytes
    let statuses: UInt64 = 0x20000
    let data: UInt64 = 0x100000 // 256 data buffers
    var availIndex: UInt16 = 0

    var queue: Virtqueue {
        var q = Virtqueue()
        q.size = size; q.descriptorTable = table; q.availableRing = avail; q.usedRing = used; q.ready = true
        return q
    }

    func descriptor(_ i: UInt16, _ address: UInt64, _ length: UInt32, _ flags: UInt16, _ next: UInt16) throws {
        let d = table + UInt64(i) * 16
        try memory.write(address, at: d); try memory.write(length, at: d + 8)
        try memory.write(flags, at: d + 12); try memory.write(next, at: d + 14)
    }

    /// Posts `count` requests (3 descriptors each) of `bytes`, request r at `sector(r)`.
    mutating func post(count: Int, type: UInt32, bytes: Int, sector: (Int) -> UInt64) throws {
        for r in 0..<count {
            let head = UInt16((r * 3) % Int(size))
            let header = headers + UInt64(r) * 16
            try memory.write(type, at: header)
            try memory.write(sector(r), at: header + 8)
            try descriptor(head, header, 16, 1, head + 1)
            try descriptor(head + 1, data + UInt64(r * bytes), UInt32(bytes), type == 0 ? 3 : 1, head + 2)
            try descriptor(head + 2, statuses + UInt64(r), 1, 2, 0)
            try memory.write(head, at: avail + 4 + 2 * UInt64(availIndex % size))
            availIndex &+= 1
        }
        try memory.write(availIndex, at: avail + 2)
    }
}

/// xorshift64*: the same offsets every run.
struct Random {
    var state: UInt64 = 1
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

/// Requests of `bytes` at consecutive sectors, or (`random`) at random `bytes`-aligned offsets.
func benchBlock(type: UInt32, bytes: Int, random: Bool = false, seconds: Double) throws -> (nsPerRequest: Double, mibPerSecond: Double) {
    let path = "/tmp/kiln-bench-\(getpid()).img"
    let imageSize = 256 << 20
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    ftruncate(fd, off_t(imageSize))
    var chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
    for o in stride(from: 0, to: imageSize, by: chunk.count) { _ = pwrite(fd, &chunk, chunk.count, off_t(o)) } // in page cache
    close(fd)
    defer { unlink(path) }

    let memory = try GuestMemory(layout: [(0, 64 << 20)])
    let block = try VirtioBlock(path: path, readOnly: false, serial: "bench")
    var driver = Driver(memory: memory)
    block.activate(queues: [driver.queue], context: VirtioContext(memory: memory, features: block.features,
                                                                   interrupt: {}, fail: { print("failed: \($0)") },
                                                                   events: NoEventLoop()))
    let batch = 64 // requests per notification
    let span = UInt64(imageSize / 512) - UInt64(batch * bytes / 512)
    var requests = 0
    var sector: UInt64 = 0
    var rng = Random()
    let slots = UInt64(imageSize / bytes)
    let start = now()
    var elapsed = 0.0
    while elapsed < seconds {
        let first = sector
        try driver.post(count: batch, type: type, bytes: bytes) { r in
            random ? rng.next() % slots * UInt64(bytes / 512) : first + UInt64(r * bytes / 512)
        }
        block.process(queue: 0)
        requests += batch
        sector = (sector + UInt64(batch * bytes / 512)) % span
        elapsed = now() - start
    }
    return (elapsed / Double(requests) * 1e9, Double(requests * bytes) / elapsed / Double(1 << 20))
}

func runBlockBenchmark() throws {
    print("| virtio-blk host path (fake guest memory, image in page cache) | ns/request | MiB/s |")
    print("|---|---:|---:|")
    for (name, type, bytes, random) in [("read 4 KiB", UInt32(0), 4096, false), ("random read 4 KiB", 0, 4096, true),
                                        ("write 4 KiB", 1, 4096, false), ("random write 4 KiB", 1, 4096, true),
                                        ("read 64 KiB", 0, 65536, false), ("write 64 KiB", 1, 65536, false)] {
        let r = try benchBlock(type: type, bytes: bytes, random: random, seconds: 2)
        print("| \(name) | \(Int(r.nsPerRequest)) | \(Int(r.mibPerSecond)) |")
    }
}

/// The device thread's loop reduced to what a throttled disk needs: the handler of each watched fd.
final class TimerLoop: EventRegistry, @unchecked Sendable {
    var handlers: [Int32: @Sendable () -> Void] = [:] // only the benchmark's thread touches it
    func watch(_ fd: Int32, _ handler: @escaping @Sendable () -> Void) throws(Errno) { handlers[fd] = handler }
    func setInterest(_ fd: Int32, readable: Bool, writable: Bool) {}
    func unwatch(_ fd: Int32) { handlers[fd] = nil }
}

/// A rate-limited disk kept busy (64 requests queued at all times) for `seconds` on the real clock
/// and timerfd: the rate it delivered once its first (full) bucket was spent, from the first refusal
/// to the last completion, against its limit.
func benchRateLimit(limit: RateLimit, bytes: Int, seconds: Double) throws -> (perSecond: Double, limit: Double) {
    let path = "/tmp/kiln-bench-rl-\(getpid()).img"
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    ftruncate(fd, off_t(64 << 20))
    close(fd)
    defer { unlink(path) }
    let memory = try GuestMemory(layout: [(0, 96 << 20)]) // 64 data buffers of up to 1 MiB from 1 MiB up
    let block = try VirtioBlock(path: path, readOnly: false, serial: "bench", limit: limit)
    let loop = TimerLoop()
    var driver = Driver(memory: memory)
    block.activate(queues: [driver.queue], context: VirtioContext(memory: memory, features: block.features,
                                                                   interrupt: {}, fail: { print("failed: \($0)") }, events: loop))
    let timer = block.throttle!.timer.fd
    let batch = 64
    var posted = 0
    func used() throws -> Int { Int(try memory.read(UInt16.self, at: driver.used + 2)) }
    let start = now()
    var refused: (time: Double, done: Int)?, last = (time: start, done: 0) // requests done (< 65536: no wrap)
    while now() - start < seconds {
        if try posted == used() {
            try driver.post(count: batch, type: 0, bytes: bytes) { UInt64($0 * bytes / 512) }
            posted += batch
            block.process(queue: 0)
        }
        if try used() > last.done { last = (now(), try used()) }
        guard try posted > used() else { continue } // everything passed: queue more at once
        if refused == nil { refused = (now(), try used()) }
        var p = pollfd(fd: timer, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 100) == 1 { loop.handlers[timer]?() }
    }
    guard let refused, last.time > refused.time else { return (0, 0) }
    let requestsPerSecond = Double(last.done - refused.done) / (last.time - refused.time)
    if let b = limit.bandwidth { return (requestsPerSecond * Double(bytes), Double(b.size) * 1000 / Double(b.refillMilliseconds)) }
    let o = limit.operations!
    return (requestsPerSecond, Double(o.size) * 1000 / Double(o.refillMilliseconds))
}

func runRateLimitBenchmark() throws {
    print("| rate-limited virtio-blk, host path (real clock and timerfd, 64 requests queued) | limit | delivered, first refusal to last completion | of the limit |")
    print("|---|---:|---:|---:|")
    for (name, limit, bytes) in [("64 KiB reads, 8 MiB/s", RateLimit(bandwidth: .init(size: 8 << 20)), 65536),
                                 ("1 MiB reads, 256 KiB/s bucket (oversized requests)", RateLimit(bandwidth: .init(size: 256 << 10)), 1 << 20),
                                 ("4 KiB reads, 1000 requests/s", RateLimit(operations: .init(size: 1000)), 4096),
                                 ("4 KiB reads, 50 requests/s refilled every 100 ms", RateLimit(operations: .init(size: 5, refillMilliseconds: 100)), 4096)] {
        let r = try benchRateLimit(limit: limit, bytes: bytes, seconds: 10)
        let unit = limit.bandwidth != nil ? "B/s" : "requests/s"
        print("| \(name) | \(Int(r.limit)) \(unit) | \(Int(r.perSecond)) \(unit) | \(String(format: "%.2f", 100 * r.perSecond / r.limit)) % |")
    }
}

//   kiln-bench [blk]     virtio-blk host-side cost per request
//   kiln-bench ratelimit a rate-limited virtio-blk's delivered rate against its limit (host side)
//   kiln-bench agent     agent protocol on the host: ping and exec round trips, stdout/stdin throughput
//   kiln-bench vm        the same through a booted sandbox (guest agent over vsock)
let mode = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "blk"
switch mode {
case "blk": try runBlockBenchmark()
case "ratelimit": try runRateLimitBenchmark()
case "agent": try await runAgentBenchmark()
case "vm": try await runSandboxBenchmark()
default: print("usage: kiln-bench [blk|ratelimit|agent|vm]"); exit(2)
}
