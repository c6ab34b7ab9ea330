import Glibc
import KilnTestSupport
import Testing

/// `kiln run --disk-rate`: a rate-limited disk is slower, never wrong (docs/net.md, "Rate limits").
/// How close it keeps to the limit is a benchmark (Benchmarks/ratelimit.sh), not asserted here.
@Suite(.blocking) struct RateLimitRunTests {
    init() {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
    }

    /// 2 MiB written with fsync and read back from the disk (the page cache dropped) through a
    /// 1 MiB/s, 200 requests/s limit: a few seconds more than unlimited, and the same bytes.
    @Test func aRateLimitedDiskCompletesADdAndReadsBackWhatWasWritten() throws {
        let script = "dd if=/dev/zero of=/rate-test bs=64k count=32 conv=fsync 2>/dev/null && echo 3 > /proc/sys/vm/drop_caches; md5sum /rate-test"
        let kiln = try KilnProcess(["run", "--disk-rate", "1M,ops=200", "--", "sh", "-c", script])
        kiln.closeInput()
        #expect(try kiln.wait(seconds: 300) == 0, "\(kiln.errorOutput.suffix(2000))")
        // md5 of 2 MiB of zeros.
        #expect(kiln.output == "b2d1236c286a3c0704224fe4105eca49  /rate-test\n", "\(kiln.output)")
    }
}
