import FoundationEssentials
import FuzzSupport
import Images

/// Fuzzes what Kiln reads from registries and image layouts (docs/images.md): image references
/// (whatever parses must print and parse to the same reference), manifests, indexes, image
/// configurations and Docker config.json credentials. The first byte picks the parser.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 5 {
    case 0:
        if let reference = try? ImageReference(parsing: String(decoding: bytes, as: UTF8.self)) {
            guard let again = try? ImageReference(parsing: reference.description), again == reference else { fatalError("reference round trip") }
        }
    case 1: _ = try? JSONDecoder().decode(ImageManifest.self, from: Data(bytes))
    case 2: _ = try? JSONDecoder().decode(ImageIndex.self, from: Data(bytes))
    case 3: _ = try? JSONDecoder().decode(ImageConfiguration.self, from: Data(bytes))
    default: _ = try? RegistryCredentials.parse(bytes)
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzImages_main; hand control to libFuzzer.
@_cdecl("FuzzImages_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
