import FuzzSupport
import KilnService

/// Fuzzes what `kiln serve` reads from its clients: the control API's JSON bodies and the
/// tenants file, Connect envelopes with the process service's request messages, multipart upload
/// bodies, and request targets (path and query percent-decoding). The first byte picks the
/// parser (low three bits) and, with the second, the size of the pieces a streamed body arrives in.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 2 else { return 0 }
    let chunk = (Int(data[0] >> 3) << 8 | Int(data[1])) % 600 + 1
    let input = Array(UnsafeBufferPointer(start: data + 2, count: size - 2))
    switch data[0] & 7 {
    case 0, 5: FuzzEntryPoints.controlRequestBodies(input)
    case 1: FuzzEntryPoints.tenantsFile(input)
    case 2, 6: FuzzEntryPoints.connectEnvelopes(input, chunk: chunk)
    case 3, 7: FuzzEntryPoints.multipart(input, boundary: "XyZ", chunk: chunk)
    default: FuzzEntryPoints.requestTarget(input)
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzServiceRequests_main; hand control to libFuzzer.
@_cdecl("FuzzServiceRequests_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
