import Foundation
import Images
import Testing

@Suite struct TarReaderTests {
    /// A pax archive with every entry kind, long names, xattrs, big ids and a fractional mtime.
    static let paxScript = #"""
import tarfile, io
def add(t, name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name); i.type = kind; i.size = len(data)
    for k, v in kw.items(): setattr(i, k, v)
    t.addfile(i, io.BytesIO(data) if data else None)
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    add(t, "etc", tarfile.DIRTYPE, mode=0o755)
    add(t, "etc/hello.txt", data=b"hello\n", mode=0o4755, uid=70000, gid=80000, mtime=1700000000.25)
    add(t, "d/" + "x" * 150 + "/caf\u00e9.txt", data=b"long")
    add(t, "etc/link", tarfile.SYMTYPE, linkname="/" + "t" * 120)
    add(t, "etc/hard", tarfile.LNKTYPE, linkname="etc/hello.txt")
    add(t, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    add(t, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
    add(t, "run/fifo", tarfile.FIFOTYPE)
    add(t, "bin/ping", data=b"\x7fELF", pax_headers={"SCHILY.xattr.security.capability": "\x01\x02", "SCHILY.xattr.user.k": "v"})
    add(t, "big", data=b"z" * 70000)
"""#

    @Test func paxArchiveFromPythonReadsBackEveryField() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        let all = try readAll(FileByteSource(path: s.file("a.tar")))
        #expect(all.map(\.0.path) == ["etc/", "etc/hello.txt", "d/" + String(repeating: "x", count: 150) + "/café.txt",
                                      "etc/link", "etc/hard", "dev/null", "dev/sda", "run/fifo", "bin/ping", "big"])
        let (hello, helloData) = all[1]
        #expect(hello.kind == .regular && helloData == Array("hello\n".utf8))
        #expect(hello.mode == 0o4755 && hello.uid == 70000 && hello.gid == 80000)
        #expect(hello.modificationTime == 1_700_000_000 && hello.modificationNanoseconds == 250_000_000)
        #expect(all[2].1 == Array("long".utf8))
        #expect(all[3].0.kind == .symbolicLink && all[3].0.linkTarget == "/" + String(repeating: "t", count: 120))
        #expect(all[4].0.kind == .hardLink && all[4].0.linkTarget == "etc/hello.txt")
        #expect(all[5].0.kind == .characterDevice && all[5].0.deviceMajor == 1 && all[5].0.deviceMinor == 3)
        #expect(all[6].0.kind == .blockDevice && all[6].0.deviceMajor == 8)
        #expect(all[7].0.kind == .fifo)
        #expect(all[8].0.xattrs == ["security.capability": [1, 2], "user.k": Array("v".utf8)])
        #expect(all[9].1 == [UInt8](repeating: UInt8(ascii: "z"), count: 70000))
        #expect(all[0].0.kind == .directory && all[0].0.mode == 0o755)
    }

    @Test func gnuLongNamesLinksAndBase256NumbersFromPython() throws {
        let s = Scratch()
        try s.python(#"""
import tarfile, io
with tarfile.open("g.tar", "w", format=tarfile.GNU_FORMAT) as t:
    i = tarfile.TarInfo("n" * 300); i.size = 3; i.uid = 1 << 30; t.addfile(i, io.BytesIO(b"abc"))
    i = tarfile.TarInfo("l"); i.type = tarfile.SYMTYPE; i.linkname = "k" * 200; t.addfile(i)
"""#)
        let all = try readAll(FileByteSource(path: s.file("g.tar")))
        #expect(all.count == 2)
        #expect(all[0].0.path == String(repeating: "n", count: 300) && all[0].0.uid == 1 << 30 && all[0].1 == Array("abc".utf8))
        #expect(all[1].0.linkTarget == String(repeating: "k", count: 200))
    }

    @Test func globalPaxHeadersApplyToLaterEntries() throws {
        let s = Scratch()
        try s.python(#"""
import tarfile, io
with tarfile.open("g.tar", "w", format=tarfile.PAX_FORMAT, pax_headers={"uname": "everyone", "SCHILY.xattr.user.g": "1"}) as t:
    for n in ["a", "b"]:
        i = tarfile.TarInfo(n); i.uname = "root"; t.addfile(i)
"""#)
        let all = try readAll(FileByteSource(path: s.file("g.tar")))
        #expect(all.map(\.0.path) == ["a", "b"])
        #expect(all.allSatisfy { $0.0.userName == "everyone" && $0.0.xattrs["user.g"] == Array("1".utf8) })
    }

    @Test func gnuTarArchivesInBothFormatsAndCompressions() throws {
        let s = Scratch()
        let deep = "tree/" + String(repeating: "long-directory-name/", count: 8) + "file.txt"
        try FileManager.default.createDirectory(atPath: s.file((deep as NSString).deletingLastPathComponent), withIntermediateDirectories: true)
        s.write(deep, Array("deep\n".utf8))
        try s.run(["ln", "-s", "../../" + String(repeating: "target", count: 30), s.file("tree/sym")])
        for format in ["gnu", "posix"] {
            try s.run(["tar", "--format=\(format)", "--sort=name", "-cf", "\(format).tar", "tree"])
            try s.run(["sh", "-c", "gzip -c \(format).tar > \(format).tar.gz && zstd -q -c \(format).tar > \(format).tar.zst"])
            for (suffix, compression) in [("", LayerCompression.none), (".gz", .gzip), (".zst", .zstd)] {
                let all = try readAll(compression.decompressing(FileByteSource(path: s.file("\(format).tar\(suffix)"))))
                let file = try #require(all.first { $0.0.path == deep })
                #expect(file.1 == Array("deep\n".utf8), "\(format)\(suffix)")
                #expect(all.first { $0.0.path == "tree/sym" }?.0.linkTarget == "../../" + String(repeating: "target", count: 30))
                #expect(all.count == 11, "\(format)\(suffix)")
            }
        }
    }

    @Test func multiMemberGzipIsOneStream() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        let tar = s.bytes("a.tar")
        s.write("one", Array(tar[..<7000])); s.write("two", Array(tar[7000...]))
        try s.run(["sh", "-c", "gzip -c one > m.gz && gzip -c two >> m.gz && zstd -q -c one > m.zst && zstd -q -c two >> m.zst"])
        for (name, compression) in [("m.gz", LayerCompression.gzip), ("m.zst", .zstd)] {
            let all = try readAll(compression.decompressing(FileByteSource(path: s.file(name))))
            #expect(all.count == 10 && all[9].1.count == 70000, "\(name)")
        }
    }

    @Test func partlyReadContentsAreSkippedByNext() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        let reader = TarReader(try FileByteSource(path: s.file("a.tar")))
        var paths: [String] = []
        while let entry = try reader.next() {
            paths.append(entry.path)
            if entry.path == "big" || entry.path == "etc/hello.txt" {
                var four = [UInt8](repeating: 0, count: 4)
                #expect(try four.withUnsafeMutableBytes { try reader.read(into: $0) } == 4)
            }
        }
        #expect(paths.count == 10)
        #expect(try reader.next() == nil)
    }

    @Test func contentsCopyToAFile() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        let reader = TarReader(try FileByteSource(path: s.file("a.tar")))
        while let entry = try reader.next(), entry.path != "big" {}
        let fd = open(s.file("out"), O_WRONLY | O_CREAT, 0o600)
        #expect(try reader.copyContents(to: fd) == 70000)
        close(fd)
        #expect(s.bytes("out") == [UInt8](repeating: UInt8(ascii: "z"), count: 70000))
    }

    // MARK: Malformed input

    @Test func truncatedArchiveIsAnError() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        let tar = s.bytes("a.tar")
        for cut in [100, 512 + 200, 5000, tar.count - 30000] {
            #expect(throws: TarError.self) { try readAll(MemoryByteSource(Array(tar[..<cut]))) }
        }
        do { _ = try readAll(MemoryByteSource(Array(tar[..<(tar.count - 30000)]))) } catch {
            guard case .truncated = error else { Issue.record("\(error)"); return }
        }
    }

    @Test func badChecksumAndBadNumbersAreErrors() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        var tar = s.bytes("a.tar")
        tar[3] ^= 0x20
        #expect(throws: TarError.badChecksum(offset: 0)) { try readAll(MemoryByteSource(tar)) }
        tar[3] ^= 0x20
        // A size field with a non-octal digit, checksum fixed up so that the field is what fails.
        var bad = tar
        bad[124] = UInt8(ascii: "9")
        fixChecksum(&bad, at: 0)
        #expect(throws: TarError.self) { try readAll(MemoryByteSource(bad)) }
    }

    @Test func malformedPaxRecordsAreErrors() throws {
        for records in ["99 path=x\n", "5 p\n", "abc path=x\n", "0 =\n", "12 path=abcd", "18446744073709551617 path=x\n",
                        "30 mtime=1.2.3\n", "16 size=-1\n", "15 uid=9x9\n", "15 path=a\0b\n"] {
            let tar = paxArchive(Array(records.utf8))
            #expect(throws: TarError.self, "\(records.debugDescription)") { try readAll(MemoryByteSource(tar)) }
        }
    }

    @Test func oversizedExtendedHeadersAreRefusedBeforeTheyAreRead() throws {
        let tar = paxArchive(Array(String(repeating: "19 comment=xxxxxxx\n", count: 100).utf8))
        #expect(throws: TarError.metadataTooLarge(offset: 0, size: 1900, limit: 1000)) {
            try readAll(MemoryByteSource(tar), limits: .init(maxMetadataSize: 1000))
        }
        #expect(try readAll(MemoryByteSource(tar)).count == 1)
    }

    @Test func garbageNeverTraps() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var bytes = (0..<Int.random(in: 0...3000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if bytes.count > 512 { fixChecksum(&bytes, at: 0) }
            _ = try? readAll(MemoryByteSource(bytes))
            _ = try? readAll(GzipSource(MemoryByteSource(bytes)))
            _ = try? readAll(ZstdSource(MemoryByteSource(bytes)))
        }
    }

    @Test func corruptAndTruncatedCompressedStreamsAreClearErrors() throws {
        let s = Scratch()
        try s.python(Self.paxScript)
        try s.run(["sh", "-c", "gzip -c a.tar > a.gz && zstd -q -c a.tar > a.zst"])
        for (name, compression, word) in [("a.gz", LayerCompression.gzip, "gzip"), ("a.zst", .zstd, "zstd")] {
            let good = s.bytes(name)
            var corrupt = good
            for i in stride(from: 40, to: corrupt.count - 40, by: 97) { corrupt[i] ^= 0x5A }
            for bytes in [corrupt, Array(good[..<(good.count / 2)]), Array(good[..<(good.count - 4)]), []] {
                do {
                    _ = try readAll(compression.decompressing(MemoryByteSource(bytes)))
                    Issue.record("\(name): no error for \(bytes.count) bytes")
                } catch {
                    #expect("\(error)".contains(word), "\(error)")
                }
            }
        }
    }
}

/// A tar with one pax header holding `records` and then a file "f".
func paxArchive(_ records: [UInt8]) -> [UInt8] {
    var out = header(name: "PaxHeader", type: UInt8(ascii: "x"), size: records.count)
    out += records + [UInt8](repeating: 0, count: (512 - records.count % 512) % 512)
    out += header(name: "f", type: UInt8(ascii: "0"), size: 0)
    return out + [UInt8](repeating: 0, count: 1024)
}

func header(name: String, type: UInt8, size: Int) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 512)
    func put(_ s: String, _ at: Int) { for (i, c) in s.utf8.enumerated() { b[at + i] = c } }
    put(name, 0); put("0000644", 100); put("0000000", 108); put("0000000", 116)
    put(String(format: "%011o", size), 124)
    put("00000000000", 136); b[156] = type; put("ustar\u{0}00", 257)
    fixChecksum(&b, at: 0)
    return b
}

func fixChecksum(_ b: inout [UInt8], at: Int) {
    for i in 148..<156 { b[at + i] = UInt8(ascii: " ") }
    let sum = b[at..<(at + 512)].reduce(0) { $0 + Int($1) }
    for (i, c) in String(format: "%06o\0 ", sum).utf8.enumerated() { b[at + 148 + i] = c }
}
