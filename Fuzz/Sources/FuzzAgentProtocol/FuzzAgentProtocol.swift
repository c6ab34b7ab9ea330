import FuzzSupport
import AgentProtocol

/// Fuzzes the agent protocol decoder with bytes from a hostile peer, fed in uneven chunks.
/// Whatever decodes must re-encode, and decode again to the same frames: the encoder and the
/// decoder agree on every value the decoder accepts.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let side: Side = data[0] & 1 == 0 ? .host : .agent
    let chunk = Int(data[0] >> 1) + 1 // 1...128
    let input = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var decoder = FrameDecoder(from: side)
    var frames: [Frame] = []
    var offset = 0
    while offset < input.count {
        let end = min(offset + chunk, input.count)
        decoder.feed(UnsafeRawBufferPointer(rebasing: input[offset..<end]))
        offset = end
        do {
            while let frame = try decoder.next() { frames.append(frame) }
        } catch {
            precondition(error.code >= 1 && error.code <= 14, "error without a wire code: \(error)")
            break
        }
    }
    _ = try? decoder.finish()

    var bytes: [UInt8] = []
    for frame in frames {
        do { try frame.encode(into: &bytes) } catch { preconditionFailure("decoded \(frame) does not encode: \(error)") }
    }
    var again = FrameDecoder(from: side)
    again.feed(bytes)
    var decoded: [Frame] = []
    do {
        while let frame = try again.next() { decoded.append(frame) }
        try again.finish()
    } catch {
        preconditionFailure("re-encoded frames do not decode: \(error)")
    }
    precondition(decoded == frames, "round trip changed the frames")
    return 0
}

// SwiftPM links an executable's entry point as FuzzAgentProtocol_main; hand control to libFuzzer.
@_cdecl("FuzzAgentProtocol_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
