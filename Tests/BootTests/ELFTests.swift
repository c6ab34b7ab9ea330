import KilnTestSupport
import Testing
@testable import Boot

@Suite struct ELFTests {
    let code = TinyKernels.printAndReset("hi")

    @Test func parsesSegmentsEntryAndPVHNote() throws {
        let elf = try ELFKernel.parse(ByteImage(TinyKernels.elf(code: code)))
        #expect(elf.entry64 == TinyKernels.loadAddress)
        #expect(elf.pvhEntry == TinyKernels.loadAddress)
        #expect(elf.segments.count == 1)
        #expect(elf.segments[0].physicalAddress == TinyKernels.loadAddress)
        #expect(elf.segments[0].fileSize == code.count)
        #expect(elf.segments[0].memorySize == UInt64(code.count + 0x1000))
    }

    @Test func kernelWithoutNoteHasNoPVHEntry() throws {
        let elf = try ELFKernel.parse(ByteImage(TinyKernels.elf(code: code, pvh: false)))
        #expect(elf.pvhEntry == nil)
    }

    @Test func truncatedAtEveryLengthIsRefusedNotCrashed() {
        let image = TinyKernels.elf(code: code)
        for length in 0..<image.count {
            #expect(throws: BootError.self, "length \(length)") {
                _ = try ELFKernel.parse(ByteImage(Array(image.prefix(length))))
            }
        }
    }

    @Test func rejectsWrongClassMachineAndType() {
        var image = TinyKernels.elf(code: code)
        image[4] = 1 // ELFCLASS32
        #expect(throws: BootError.unsupported("32-bit ELF; Kiln boots 64-bit kernels")) { _ = try ELFKernel.parse(ByteImage(image)) }
        image = TinyKernels.elf(code: code)
        image[18] = 0x28 // ARM
        #expect(throws: BootError.unsupported("ELF is not for x86-64")) { _ = try ELFKernel.parse(ByteImage(image)) }
        image = TinyKernels.elf(code: code)
        image[16] = 3 // ET_DYN
        #expect(throws: BootError.self) { _ = try ELFKernel.parse(ByteImage(image)) }
        image = TinyKernels.elf(code: code)
        image[1] = 0x46
        #expect(throws: BootError.notAKernel("no ELF magic")) { _ = try ELFKernel.parse(ByteImage(image)) }
    }

    @Test func rejectsSegmentsPointingOutsideTheFile() {
        var image = TinyKernels.elf(code: code)
        let phFileSize = 64 + 32 // first program header's p_filesz
        image.replaceSubrange(phFileSize..<phFileSize + 8, with: TinyKernels.le64(1 << 40))
        #expect(throws: BootError.self) { _ = try ELFKernel.parse(ByteImage(image)) }
    }

    @Test func rejectsFileSizeLargerThanMemorySize() {
        var image = TinyKernels.elf(code: code)
        let phMemSize = 64 + 40
        image.replaceSubrange(phMemSize..<phMemSize + 8, with: TinyKernels.le64(1))
        #expect(throws: BootError.malformed("segment 0 file size exceeds its memory size")) { _ = try ELFKernel.parse(ByteImage(image)) }
    }

    @Test func rejectsAbsurdProgramHeaderCount() {
        var image = TinyKernels.elf(code: code)
        image.replaceSubrange(56..<58, with: TinyKernels.le16(0xFFFF))
        #expect(throws: BootError.malformed("65535 program headers")) { _ = try ELFKernel.parse(ByteImage(image)) }
    }

    @Test func noteRunningPastItsSegmentIsMalformed() {
        let note = TinyKernels.le32(4) + TinyKernels.le32(0x1000) + TinyKernels.le32(18) + Array("Xen\0".utf8)
        #expect(throws: BootError.self) { _ = try ELFKernel.pvhEntry(inNotes: note) }
    }

    @Test func otherNotesAreSkipped() throws {
        let gnu = TinyKernels.le32(4) + TinyKernels.le32(4) + TinyKernels.le32(3) + Array("GNU\0".utf8) + [1, 2, 3, 4]
        let xen = TinyKernels.le32(4) + TinyKernels.le32(8) + TinyKernels.le32(18) + Array("Xen\0".utf8) + TinyKernels.le64(0x123456)
        #expect(try ELFKernel.pvhEntry(inNotes: gnu + xen) == 0x123456)
        #expect(try ELFKernel.pvhEntry(inNotes: gnu) == nil)
    }

    @Test func randomCorruptionNeverCrashes() {
        var rng = SystemRandomNumberGenerator()
        let original = TinyKernels.elf(code: code)
        for _ in 0..<2000 {
            var image = original
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                image[Int.random(in: 0..<image.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? ELFKernel.parse(ByteImage(image))
        }
    }
}
