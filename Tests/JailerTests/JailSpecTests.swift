@testable import Jailer
import Testing

@Suite struct JailSpecTests {
    @Test func specRoundTripsThroughItsArgument() {
        let spec = JailSpec(root: "/run/kiln/jail/12-ab/root", uid: 64001, gid: 64002, openFiles: 99, fileSize: 1 << 31, control: true, commands: true)
        #expect(JailSpec.decode(spec.encoded) == spec)
        #expect(JailSpec.decode(JailSpec(root: "/r").encoded)?.control == false)
    }

    @Test func malformedSpecsAreRefused() {
        for bad in ["", "root=relative,uid=1,gid=1,nofile=1,fsize=1,control=0", "root=/r,uid=x,gid=1,nofile=1,fsize=1,control=0",
                    "root=/r,gid=1,nofile=1,fsize=1,control=0", "garbage"] {
            #expect(JailSpec.decode(bad) == nil, "\(bad)")
        }
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
    }
}
