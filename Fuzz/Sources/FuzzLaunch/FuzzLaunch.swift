import FuzzSupport
import VMMProtocol

/// Fuzzes the decoders of the supervisor-VMM wire formats (docs/security.md, "Launch
/// configuration"): the first byte picks the launch configuration, the sandbox record or a
/// command; whatever decodes must encode and decode to the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 3 {
    case 0:
        if let launch = try? VMMLaunch.decode(bytes), (try? VMMLaunch.decode(launch.encoded())) != launch { fatalError("launch round trip") }
        // Behind a valid magic, so that mutations reach the fields.
        _ = try? VMMLaunch.decode([0x4B, 0x56, 0x4D, 0x4C, 3] + bytes)
    case 1:
        if let record = try? VMMRecord.decode(bytes), (try? VMMRecord.decode(record.encoded())) != record { fatalError("record round trip") }
        _ = try? VMMRecord.decode([0x4B, 0x53, 0x42, 0x52, 1] + bytes)
    default:
        if let command = try? VMMCommand.parse(String(decoding: bytes, as: UTF8.self)),
           (try? VMMCommand.parse(command.text)) != command { fatalError("command round trip") }
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzLaunch_main; hand control to libFuzzer.
@_cdecl("FuzzLaunch_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
