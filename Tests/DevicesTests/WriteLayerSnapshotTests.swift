import Glibc
import Testing
@testable import Devices

/// A write layer saved into a snapshot and loaded into a fresh layer (a clone's).
@Suite struct WriteLayerSnapshotTests {
    @Test func savedSectorsComeBackInAFreshLayer() throws {
        let file = "/tmp/kiln-layer-test-\(getpid()).layer"
        defer { unlink(file) }
        let layer = try WriteLayer(sectors: 200, directory: "/tmp")
        for (sector, byte) in [(3, UInt8(0xA1)), (4, 0xA2), (130, 0xB0)] {
            let bytes = [UInt8](repeating: byte, count: VirtioBlock.sectorSize)
            #expect(pwrite(layer.fd, bytes, bytes.count, off_t(sector * VirtioBlock.sectorSize)) == bytes.count)
            layer.markWritten(sector: UInt64(sector), count: 1)
        }
        try layer.save(to: file)

        let clone = try WriteLayer(sectors: 200, directory: "/tmp")
        try clone.restore(from: file, bitmap: layer.bitmap)
        #expect(clone.writtenSectors == 3)
        #expect(clone.runs(sector: 2, count: 4).map(\.inLayer) == [false, true, false])
        for (sector, byte) in [(3, UInt8(0xA1)), (4, 0xA2), (130, 0xB0)] {
            var got = [UInt8](repeating: 0, count: VirtioBlock.sectorSize)
            #expect(pread(clone.fd, &got, got.count, off_t(sector * VirtioBlock.sectorSize)) == got.count)
            #expect(got.allSatisfy { $0 == byte })
        }
        let otherSize = try WriteLayer(sectors: 1000, directory: "/tmp")
        #expect(throws: (any Error).self) { try otherSize.restore(from: file, bitmap: layer.bitmap) }
    }
}
