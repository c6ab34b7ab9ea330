import Synchronization
import Testing
@testable import Devices

/// A clock that moves only when a test moves it: nothing here depends on wall-clock time.
final class FakeClock: Sendable {
    let nanoseconds = Atomic<UInt64>(1_000_000_000)
    var read: RateClock { { [self] in nanoseconds.load(ordering: .relaxed) } }
    func advance(_ ns: UInt64) { nanoseconds.add(ns, ordering: .relaxed) }
    func advance(milliseconds ms: UInt64) { advance(ms * 1_000_000) }
}

@Suite struct TokenBucketTests {
    let second: UInt64 = 1_000_000_000

    @Test func aBucketStartsFullAndRefillsItsSizePerRefillTime() {
        var b = TokenBucket(.init(size: 1000, refillMilliseconds: 1000), now: 0)
        #expect(b.allows(1000))
        b.take(1000)
        #expect(!b.allows(1))
        #expect(b.wait(for: 500) == second / 2, "500 of 1000 tokens a second take half a second")
        b.refill(now: second / 4)
        #expect(b.budget == 250)
        #expect(b.allows(250) && !b.allows(251))
        b.refill(now: 10 * second)
        #expect(b.budget == 1000, "never more than the size, however long it waited")
    }

    @Test func refillKeepsFractionsOfATokenInsteadOfLosingThem() {
        // 3 tokens a second: 1/3 s per token, which no whole number of nanoseconds is.
        var b = TokenBucket(.init(size: 3, refillMilliseconds: 1000), now: 0)
        b.take(3)
        var now: UInt64 = 0
        for _ in 0..<999 { now += second / 1000; b.refill(now: now) } // a thousand small steps a second
        #expect(b.budget == 2, "after 999 ms, two whole tokens (the third is 1 ms away)")
        b.refill(now: now + second / 1000)
        #expect(b.budget == 3, "a second of refill in tiny steps comes to the full three tokens")
    }

    @Test func theOneTimeBurstIsSpentFirstAndNeverComesBack() {
        var b = TokenBucket(.init(size: 100, oneTimeBurst: 400, refillMilliseconds: 1000), now: 0)
        #expect(b.allows(500), "burst plus a full bucket")
        b.take(450)
        #expect(b.burst == 0 && b.budget == 50)
        b.refill(now: 60 * second)
        #expect(b.burst == 0 && b.budget == 100, "the bucket refills; the burst does not")
        b.take(1)
        #expect(!b.allows(100))
    }

    @Test func anOversizedRequestPassesWhenTheBucketIsFullAndLeavesADebt() {
        var b = TokenBucket(.init(size: 1000, refillMilliseconds: 1000), now: 0)
        b.take(1)
        #expect(!b.allows(3000), "bigger than the bucket: it waits for a full bucket")
        #expect(b.wait(for: 3000) == second / 1000, "one token short of full")
        b.refill(now: second)
        #expect(b.allows(3000))
        b.take(3000)
        #expect(b.budget == -2000)
        // The debt is paid before anything passes: 2000 tokens of debt and 100 more at 1000 a second.
        #expect(b.wait(for: 100) == 2_100_000_000)
        b.refill(now: second + 2 * second)
        #expect(b.budget == 0 && !b.allows(1))
    }

    @Test func limitsOutOfRangeAreInvalid() {
        #expect(!TokenBucket.Limit(size: 0).isValid)
        #expect(!TokenBucket.Limit(size: 1, refillMilliseconds: 0).isValid)
        #expect(!TokenBucket.Limit(size: TokenBucket.Limit.maximumSize + 1).isValid)
        #expect(TokenBucket.Limit(size: TokenBucket.Limit.maximumSize, oneTimeBurst: TokenBucket.Limit.maximumSize).isValid)
    }

    @Test func aHugeBucketAfterALongIdleNeitherOverflowsNorTraps() {
        var b = TokenBucket(.init(size: TokenBucket.Limit.maximumSize, refillMilliseconds: 1), now: 0)
        b.take(TokenBucket.Limit.maximumSize)
        b.refill(now: UInt64.max / 2)
        #expect(b.budget == Int64(TokenBucket.Limit.maximumSize))
    }
}

@Suite struct RateLimiterTests {
    @Test func bandwidthAndOperationsAreTakenTogetherOrNotAtAll() {
        let clock = FakeClock()
        // 3000 bytes a day (so that they do not come back during the test), 2 operations a second.
        let limiter = RateLimiter(RateLimit(bandwidth: .init(size: 3000, refillMilliseconds: 86_400_000), operations: .init(size: 2)),
                                  clock: clock.read)
        #expect(limiter.consume(bytes: 1000) == nil)
        #expect(limiter.consume(bytes: 1000) == nil)
        // Bytes left but no operation: refused, and the bytes are not taken either.
        #expect(limiter.consume(bytes: 1000) == 500_000_000, "one operation of two a second is back in half a second")
        clock.advance(milliseconds: 500)
        #expect(limiter.consume(bytes: 1000) == nil, "the refused request took none of the last 1000 bytes")
        #expect(limiter.consume(bytes: 1) != nil, "no bytes left now")
    }

    @Test func aLimiterAdmitsItsRateOverTime() {
        // 10 KiB a second in 1 KiB requests, retried when told: 100 requests take ~9 s after the first full bucket.
        let clock = FakeClock()
        let limiter = RateLimiter(RateLimit(bandwidth: .init(size: 10240)), clock: clock.read)
        let start = clock.read()
        var admitted = 0
        while admitted < 100 {
            if let wait = limiter.consume(bytes: 1024) { clock.advance(wait) } else { admitted += 1 }
        }
        let elapsed = clock.read() - start
        #expect(elapsed >= 9 * 1_000_000_000 && elapsed < 9 * 1_000_000_000 + 1_000_000, "\(elapsed) ns")
    }
}
