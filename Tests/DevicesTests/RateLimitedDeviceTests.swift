import Glibc
import GuestMemory
import LinuxSys
import Testing
@testable import Devices

/// Rate-limited devices on a fake clock: a test moves the clock and runs the timer's handler
/// itself (ManualEvents), as the device thread would when the timerfd expires.
@Suite struct RateLimitedBlockTests {
    /// Three 1 KiB reads (sectors 0-1, 2-3, 4-5), each with its own header, data and status buffer.
    func postReads(_ d: inout GuestDriver) throws {
        for i in 0..<3 {
            let hdr = 0x10000 + UInt64(i) * 0x100, data = 0x20000 + UInt64(i) * 0x1000, status = 0x30000 + UInt64(i)
            try d.memory.write(VirtioBlock.requestIn, at: hdr)
            try d.memory.write(UInt32(0), at: hdr + 4)
            try d.memory.write(UInt64(2 * i), at: hdr + 8)
            try d.memory.write(UInt8(0xFF), at: status)
            try d.post([(hdr, 16, false), (data, 1024, true), (status, 1, true)])
        }
    }

    func activate(_ block: VirtioBlock, _ d: GuestDriver, _ events: any EventRegistry) -> DeviceLog {
        let log = DeviceLog()
        block.activate(queues: [d.queue()], context: VirtioContext(
            memory: d.memory, features: block.features, interrupt: { log.interrupts.add(1, ordering: .relaxed) },
            fail: { reason in log.failures.withLock { $0.append(reason) } }, events: events))
        return log
    }

    /// A disk of `bandwidth` bytes a second on a fake clock, activated with a hand-driven event loop.
    struct Rig {
        let block: VirtioBlock
        var driver: GuestDriver
        let clock = FakeClock()
        let events = ManualEvents()
        let log: DeviceLog
        init(_ path: String, bandwidth: UInt64, suite: RateLimitedBlockTests) throws {
            block = try VirtioBlock(path: path, readOnly: false, serial: "s", limit: RateLimit(bandwidth: .init(size: bandwidth)),
                                    clock: clock.read)
            driver = try GuestDriver()
            log = suite.activate(block, driver, events)
        }
    }

    @Test func aThrottledDiskStopsTakingRequestsAndResumesWhenItsTimerFires() throws {
        let path = makeImage(sectors: 16, name: "rate")
        defer { unlink(path) }
        // 2 KiB a second: two of the 1 KiB reads pass at once, the third waits for half a second of refill.
        var rig = try Rig(path, bandwidth: 2048, suite: self)
        let (block, clock, events, log) = (rig.block, rig.clock, rig.events, rig.log)
        let timer = try #require(block.throttle?.timer.fd)
        #expect(events.isWatching(timer))
        try postReads(&rig.driver)
        let d = rig.driver

        block.process(queue: 0)
        #expect(try d.usedIndex() == 2, "the third read waits on the ring")
        #expect(try d.memory.read(UInt8.self, at: 0x30002) == 0xFF, "and was not touched")
        let deadline = try #require(block.throttle).timer.remaining
        #expect(deadline > 0 && deadline <= 500_000_000, "the timer is set for when 1 KiB is back (at most half a second)")

        block.process(queue: 0) // the guest notifying again changes nothing while throttled
        #expect(try d.usedIndex() == 2)
        clock.advance(milliseconds: 499)
        events.fire() // early (a spurious wake-up): still short of 1 KiB
        #expect(try d.usedIndex() == 2)
        clock.advance(milliseconds: 1)
        events.fire()
        #expect(try d.usedIndex() == 3)
        #expect(try d.memory.read(UInt8.self, at: 0x30002) == VirtioBlock.statusOK)
        #expect(try d.memory.read(1024, at: 0x22000) == [UInt8](repeating: 4, count: 512) + [UInt8](repeating: 5, count: 512),
                "the late read has the right sectors")
        #expect(log.failures.withLock { $0 }.isEmpty, "the guest saw slower I/O, never an error")
    }

    @Test func operationsAreLimitedAndAnUnlimitedDiskIsUnaffected() throws {
        let path = makeImage(sectors: 16, name: "rate-ops")
        defer { unlink(path) }
        let clock = FakeClock()
        let limited = try VirtioBlock(path: path, readOnly: false, serial: "s", limit: RateLimit(operations: .init(size: 1)),
                                      clock: clock.read)
        let free = try VirtioBlock(path: path, readOnly: false, serial: "t", clock: clock.read)
        #expect(free.throttle == nil, "no limit: no timer, nothing checked")
        var a = try GuestDriver(), b = try GuestDriver()
        _ = activate(limited, a, ManualEvents())
        _ = activate(free, b, NoEventLoop())
        try postReads(&a)
        try postReads(&b)
        limited.process(queue: 0)
        free.process(queue: 0)
        #expect(try a.usedIndex() == 1, "one request a second")
        #expect(try b.usedIndex() == 3, "the other disk is not held up")
    }

    @Test func aRequestLargerThanTheBucketStillCompletes() throws {
        let path = makeImage(sectors: 16, name: "rate-big")
        defer { unlink(path) }
        // A 512-byte bucket and 1 KiB reads: each passes on a full bucket, then waits out its debt.
        var rig = try Rig(path, bandwidth: 512, suite: self)
        let (block, clock, events) = (rig.block, rig.clock, rig.events)
        try postReads(&rig.driver)
        let d = rig.driver
        block.process(queue: 0)
        #expect(try d.usedIndex() == 1)
        clock.advance(milliseconds: 1000) // pays the 512-byte debt: the bucket is empty, not yet full
        events.fire()
        #expect(try d.usedIndex() == 1)
        clock.advance(milliseconds: 1000)
        events.fire()
        #expect(try d.usedIndex() == 2)
        clock.advance(milliseconds: 2000)
        events.fire()
        #expect(try d.usedIndex() == 3)
        #expect(try d.memory.read(UInt8.self, at: 0x30002) == VirtioBlock.statusOK)
    }
}

@Suite struct RateLimitedNetTests {
    let header = [UInt8](repeating: 0, count: VirtioNet.headerSize)

    @Test func aThrottledTransmitQueueWaitsForItsTimerAndLosesNothing() throws {
        let clock = FakeClock()
        // 200 bytes a second: two 100-byte frames pass, the third waits.
        let rig = try NetRig(txLimit: RateLimit(bandwidth: .init(size: 200)), clock: clock.read)
        rig.activate()
        let frames = (0..<3).map { i in [UInt8](repeating: UInt8(i + 1), count: 100) }
        for f in frames { try rig.offer(1, [try rig.stage(header + f)]) }
        rig.device.process(queue: 1)
        #expect(rig.hostReceive() == header + frames[0])
        #expect(rig.hostReceive() == header + frames[1])
        #expect(rig.hostReceive() == nil, "the third frame is not sent yet")
        #expect(try rig.used(1).index == 2)
        clock.advance(milliseconds: 500)
        rig.events.fire()
        #expect(rig.hostReceive() == header + frames[2])
        #expect(try rig.used(1).index == 3)
        #expect(rig.device.txDropped.load(ordering: .relaxed) == 0 && rig.failures.isEmpty)
    }

    @Test func aThrottledReceiveDirectionStopsReadingTheBackendWhileTransmitGoesOn() throws {
        let clock = FakeClock()
        let rig = try NetRig(rxLimit: RateLimit(bandwidth: .init(size: 200)), clock: clock.read)
        rig.activate()
        for _ in 0..<3 { try rig.offer(0, [rig.space(1526)]) }
        for i in 0..<3 { rig.hostSend(header + [UInt8](repeating: UInt8(i + 1), count: 100)) }
        rig.events.fire()
        #expect(try rig.used(0).index == 2)
        #expect(!rig.readingBackend, "over the limit the TAP is not read: frames wait there")
        // The other direction has its own (here: no) limit.
        try rig.offer(1, [try rig.stage(header + [9, 9, 9])])
        rig.device.process(queue: 1)
        #expect(rig.hostReceive() == header + [9, 9, 9])
        rig.device.process(queue: 0) // new rx buffers do not restart reading while throttled
        #expect(!rig.readingBackend)
        clock.advance(milliseconds: 500)
        rig.events.fire()
        let used = try rig.used(0)
        #expect(used.index == 3 && used.elements.last?.length == UInt32(VirtioNet.headerSize + 100))
        #expect(try rig.memory.read(100, at: NetRig.data + 2 * 0x1000 + UInt64(VirtioNet.headerSize)) == [UInt8](repeating: 3, count: 100),
                "the third frame, whole and in order")
        #expect(!rig.readingBackend, "out of buffers now, not throttled:")
        try rig.offer(0, [rig.space(1526)])
        rig.device.process(queue: 0)
        #expect(rig.readingBackend, "a new buffer restarts reading, as without a limit")
        #expect(rig.device.rxDropped.load(ordering: .relaxed) == 0 && rig.failures.isEmpty)
    }
}
