import LinuxSys

extension BlockingExecutor {
    /// The service's own threads for its async work: every HTTP connection and handler, the
    /// manager's sweeps and pools, output pumps. Swift Concurrency's cooperative pool has one
    /// thread per core and never adds one for a thread that blocks, so a service that shares it
    /// with code that blocks (a test process's synchronous tests, a library user's calls) stops
    /// answering; on these threads it does not depend on anyone else's.
    public static let service = BlockingExecutor(threads: 8, name: "kiln-service")
}
