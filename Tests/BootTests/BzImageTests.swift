import KilnTestSupport
import Testing
@testable import Boot

@Suite struct BzImageTests {
    let payload = TinyKernels.bzPayload(code: TinyKernels.printAndReset("bz"))

    @Test func parsesTheSetupHeader() throws {
        let bz = try BzImage.parse(ByteImage(TinyKernels.bzImage(payload: payload)))
        #expect(bz.version == 0x020F)
        #expect(bz.kernelOffset == 1024)
        #expect(bz.preferredAddress == 0x100_0000)
        #expect(bz.cmdlineSize == 2048)
        #expect(bz.relocatable)
        #expect(bz.header.count == 0x202 + 0x66 - 0x1F1)
    }

    @Test func zeroSetupSectorsMeansFour() throws {
        let bz = try BzImage.parse(ByteImage(TinyKernels.bzImage(payload: payload, setupSectors: 0)
            + [UInt8](repeating: 0, count: 4096)))
        #expect(bz.setupSectors == 4)
        #expect(bz.kernelOffset == 5 * 512)
    }

    @Test func refusesOldProtocolsAndKernelsWithout64BitEntry() {
        #expect(throws: BootError.self) { _ = try BzImage.parse(ByteImage(TinyKernels.bzImage(payload: payload, version: 0x0204))) }
        #expect(throws: BootError.unsupported("kernel has no 64-bit entry point (XLF_KERNEL_64 clear)")) {
            _ = try BzImage.parse(ByteImage(TinyKernels.bzImage(payload: payload, xloadflags: 0)))
        }
    }

    @Test func refusesMissingMagicAndTruncation() {
        var image = TinyKernels.bzImage(payload: payload)
        image[0x202] = 0
        #expect(throws: BootError.notAKernel("no \"HdrS\" setup header")) { _ = try BzImage.parse(ByteImage(image)) }
        let whole = TinyKernels.bzImage(payload: payload)
        for length in [0, 100, 600, 1023, 1024] {
            #expect(throws: BootError.self, "length \(length)") { _ = try BzImage.parse(ByteImage(Array(whole.prefix(length)))) }
        }
    }

    @Test func refusesInitSizeSmallerThanTheKernel() {
        #expect(throws: BootError.self) {
            _ = try BzImage.parse(ByteImage(TinyKernels.bzImage(payload: payload, initSize: 16)))
        }
    }
}
