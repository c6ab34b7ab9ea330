import Agent
import Testing

/// The kernel command line keys that make the agent enter an image (docs/agent-protocol.md).
@Suite struct ImageRootTests {
    @Test func kilnRootNamesTheDiskAndTheOtherKeysDefault() {
        let p = ImageRoot.parameters(cmdline: "console=ttyS0 root=/dev/vdb ro init=/sbin/kiln-agent kiln.root=/dev/vda quiet\n")
        #expect(p == ImageRoot.Parameters(device: "/dev/vda", type: "ext4", data: nil))
        let q = ImageRoot.parameters(cmdline: "kiln.rootfstype=erofs kiln.root=/dev/vdc kiln.rootflags=noacl")
        #expect(q == ImageRoot.Parameters(device: "/dev/vdc", type: "erofs", data: "noacl"))
    }

    @Test func withoutKilnRootTheAgentStaysWhereItIs() {
        #expect(ImageRoot.parameters(cmdline: "console=ttyS0 root=/dev/vda rw init=/sbin/kiln-agent") == nil)
        #expect(ImageRoot.parameters(cmdline: "kiln.root= kiln.rootfstype=ext4") == nil)
    }
}
