import FuzzSupport
import VMM

/// Fuzzes the snapshot state file parser (docs/snapshot-format.md): the input is a state file.
/// Most mutations fail the checksum, so every other input gets a valid CRC-32 patched in first
/// and reaches the section parser.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? SnapshotInfo.parse(bytes)
    if bytes.count >= 32, bytes[0] & 1 == 0 {
        let body = bytes[32...]
        let length = UInt64(body.count)
        for i in 0..<8 { bytes[16 + i] = UInt8(truncatingIfNeeded: length >> (8 * UInt64(i))) }
        let crc = crc32(body)
        for i in 0..<4 { bytes[24 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        _ = try? SnapshotInfo.parse(bytes)
    }
    return 0
}

func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }
    return ~c
}

// SwiftPM links an executable's entry point as FuzzSnapshot_main; hand control to libFuzzer.
@_cdecl("FuzzSnapshot_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
