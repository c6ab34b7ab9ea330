import LinuxSys
import Testing

/// Runs a suite's tests on threads of their own instead of Swift Concurrency's cooperative pool.
///
/// Swift Testing runs every test on that pool, which has one thread per core (two here) and never
/// adds one for a thread that blocks. A synchronous test that waits on a VM or a `kiln` process
/// holds a pool thread for seconds or minutes; two of them, and every async test in the process
/// (an in-process server's handlers, a pull, a wait with a deadline) stops until one returns, and
/// then fails on a deadline it never had a chance to meet. Suites of synchronous tests that block
/// take `@Suite(.blocking)`: their tests run on `BlockingTests.threads`, as many threads as the
/// pool has, so they keep the parallelism they had and the pool stays free for the async tests.
public struct BlockingTests: SuiteTrait, TestTrait, TestScoping {
    public static let threads = BlockingExecutor(threads: 2, name: "test-blocking")

    public var isRecursive: Bool { true }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> BlockingTests? {
        testCase == nil ? nil : self
    }

    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        try await withTaskExecutorPreference(Self.threads) { try await function() }
    }
}

extension Trait where Self == BlockingTests {
    /// See `BlockingTests`.
    public static var blocking: BlockingTests { BlockingTests() }
}
