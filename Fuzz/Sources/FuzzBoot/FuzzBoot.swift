import FuzzSupport
import Boot
import GuestMemory

/// Fuzzes the kernel image parsers and the loader: the input is a kernel image (ELF or bzImage).
nonisolated(unsafe) var memory: GuestMemory! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if memory == nil { memory = try! GuestMemory(layout: [(0, 64 << 20)]) }
    let image = ByteImage(Array(UnsafeBufferPointer(start: data, count: size)), name: "fuzz")
    _ = try? ELFKernel.parse(image)
    _ = try? BzImage.parse(image)
    _ = try? Loader.load(BootRequest(kernel: image, initrd: ByteImage([1, 2, 3]), cmdline: "console=ttyS0"), into: memory)
    return 0
}

// SwiftPM links an executable's entry point as FuzzBoot_main; hand control to libFuzzer.
@_cdecl("FuzzBoot_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
