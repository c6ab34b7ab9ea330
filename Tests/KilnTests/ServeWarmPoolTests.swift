import Glibc
import KilnTestSupport
import Sandbox
import Testing

/// `kiln serve --warm TEMPLATE=1` as root, where every VMM is detached: SIGTERM stops the pool's
/// VMs with the service; after a SIGKILL the pool's VM runs on, no record names it, and the next
/// start stops it.
@Suite struct ServeWarmPoolTests {
    @Test func thePoolEndsWithTheServiceAndAKilledServicesPoolIsStoppedAtTheNextStart() async throws {
        try #require(geteuid() == 0, "pooled VMMs are detached (outlive the service) only as root")
        let config = Sandbox.Configuration(kernelPath: TemplateTests.kernel, imagePath: TemplateTests.image)
        let template = Templates.autoName(for: config)
        if !Templates.usable(template) { try await Templates.create(template, config: config).stop() }
        let state = "/tmp/kiln-serve-pool-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = system("rm -rf '\(state)'") }
        func serve() throws -> KilnProcess {
            let kiln = try KilnProcess(["serve", "--listen", "127.0.0.1:0", "--state-dir", state, "--warm", "\(template)=1"])
            try kiln.waitFor("kiln serve to listen", seconds: 120) { $0.errorOutput.contains("listening on http://") }
            return kiln
        }
        func pooled() -> [String] { Sandbox.detachedSandboxes(in: state + "/vms") }

        var kiln = try serve()
        defer { _ = Glibc.kill(kiln.pid, SIGKILL); _ = try? kiln.wait(seconds: 30) }
        try kiln.waitFor("the pool to fill", seconds: 60) { _ in pooled().count == 1 }
        let orphan = pooled()
        #expect(Glibc.kill(kiln.pid, SIGKILL) == 0)
        _ = try kiln.wait(seconds: 30)
        #expect(pooled() == orphan, "the killed service's pooled VM runs on until the next start")

        kiln = try serve()
        #expect(!pooled().contains(orphan[0]), "the restarted service left the old pool's VM running")
        try kiln.waitFor("the pool to fill again", seconds: 60) { _ in pooled().count == 1 }
        #expect(Glibc.kill(kiln.pid, SIGTERM) == 0)
        #expect(try kiln.wait(seconds: 60) == 0, "\(kiln.errorOutput)")
        #expect(pooled().isEmpty, "a pooled VM outlived the service")
    }
}
