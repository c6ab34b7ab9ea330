import Glibc
@testable import Jailer
import Testing

@Suite struct JailSpecTests {
    @Test func aProcessIdentityNamesThisProcessAndNoLaterOne() throws {
        let me = try #require(ProcessIdentity.of(getpid()))
        #expect(me.isAlive)
        #expect(ProcessIdentity(text: me.text) == me)
        // The same pid with another start time (a reused pid) or from another boot is not it.
        #expect(!ProcessIdentity(pid: me.pid, startTime: me.startTime + 1, bootID: me.bootID).isAlive)
        #expect(!ProcessIdentity(pid: me.pid, startTime: me.startTime, bootID: "another-boot").isAlive)
        #expect(!ProcessIdentity(pid: Int32.max - 1, startTime: 1, bootID: me.bootID).isAlive)
        for bad in ["", "1 2 x", "12 nope x", "12 34"] { #expect(ProcessIdentity(text: bad) == nil, "\(bad)") }
    }

    @Test func anExitedProcessIsNotAlive() throws {
        let pid = fork()
        if pid == 0 { _exit(0) }
        let identity = try #require(ProcessIdentity.of(pid))
        usleep(200_000)
        #expect(!identity.isAlive, "a zombie is not a running VMM")
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(!identity.isAlive)
    }

    @Test func limitsFollowTheVM() {
        let options = JailOptions(cpus: 2, memoryMiB: 256)
        #expect(options.limits.memoryBytes == (256 + JailOptions.vmmOverheadMiB) << 20)
        #expect(options.limits.cpuQuotaMicros == 300_000)
        #expect(options.limits.pids == 18)
    }

    @Test func mountTableFindsCgroupHierarchies() {
        let table = MountTable.parse("""
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
            36 31 0:33 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            44 31 0:41 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """)
        #expect(table.v1("cpu")?.point == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(table.v1("memory")?.root == "/outer")
        #expect(table.v1("pids") == nil)
        #expect(table.v2()?.point == "/sys/fs/cgroup/unified")
    }

    @Test func staleIDsAreThoseOfGoneSupervisors() {
        #expect(!Supervisor.isStale("not-an-id"))
        #expect(!Supervisor.isStale("1-abc"), "PID 1 is alive")
        #expect(Supervisor.isStale("\(Int32.max - 1)-abc"), "no such process")
        // A detached VMM's id, before its identity is recorded: its creator's pid decides.
        #expect(!Supervisor.isStale("d1-abc"))
        #expect(Supervisor.isStale("d\(Int32.max - 1)-abc"))
    }
}
