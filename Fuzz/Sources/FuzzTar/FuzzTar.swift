import FuzzSupport
import Images

/// Fuzzes the tar reader over hostile layer bytes (docs/images.md, "Layers and root disks"): the
/// first byte picks the stream (plain tar, gzip, zstd) and the size of the reads of each entry's
/// contents. Whatever the input, the reader returns entries or a TarError; it never traps, never
/// returns more contents than an entry's size, and never holds more metadata than its limit.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let chunk = Int(data[0] >> 2) * 37 + 1
    let source: ByteSource
    switch data[0] % 3 {
    case 0: source = MemoryByteSource(bytes)
    case 1: guard let s = try? GzipSource(MemoryByteSource(bytes)) else { return 0 }; source = s
    default: guard let s = try? ZstdSource(MemoryByteSource(bytes)) else { return 0 }; source = s
    }
    let reader = TarReader(source, limits: .init(maxMetadataSize: 64 << 10, maxTrailingBytes: 64 << 10))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 8)
    defer { buffer.deallocate() }
    var entries = 0
    while entries < 10_000, let entry = try? reader.next() {
        entries += 1
        if entry.pathBytes.contains(0) || entry.linkTargetBytes.contains(0) { fatalError("NUL in a path") }
        if entry.size < 0 { fatalError("negative size") }
        var read: Int64 = 0
        while let n = try? reader.read(into: buffer), n > 0 { read += Int64(n) }
        if read > entry.size { fatalError("read \(read) bytes of a \(entry.size)-byte entry") }
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzTar_main; hand control to libFuzzer.
@_cdecl("FuzzTar_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
