import FuzzSupport
import Devices
import Glibc
import GuestMemory
import LinuxSys

/// Fuzzes the split virtqueue and the virtio-blk request path: the input becomes the whole
/// of a small guest memory (rings, descriptors, headers), as a hostile guest could write it.
let memorySize = 64 << 10
nonisolated(unsafe) var memory: GuestMemory! = nil
nonisolated(unsafe) var block: VirtioBlock! = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    if memory == nil {
        memory = try! GuestMemory(layout: [(0, memorySize)])
        let path = "/tmp/kiln-fuzz-disk-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        ftruncate(fd, 64 << 10)
        close(fd)
        block = try! VirtioBlock(path: path, readOnly: false, serial: "fuzz")
        unlink(path)
    }
    guard size >= 4 else { return 0 }
    try! memory.fill(0, count: memorySize, at: 0)
    try! memory.write(UnsafeRawBufferPointer(start: data + 4, count: min(size - 4, memorySize)), at: 0)
    var q = Virtqueue()
    q.size = UInt16(1) << (data[0] % 9) // 1...256
    q.descriptorTable = UInt64(data[1] & 0xF0) << 8
    q.availableRing = UInt64(data[2] & 0xFE) << 8
    q.usedRing = UInt64(data[3] & 0xFC) << 8
    q.eventIndex = data[0] & 0x80 != 0
    q.ready = q.validate(memory)
    guard q.ready else { return 0 }
    block.activate(queues: [q], context: VirtioContext(memory: memory, features: block.features,
                                                       interrupt: {}, fail: { _ in }, events: NoEventLoop()))
    block.process(queue: 0)
    block.reset()
    return 0
}

// SwiftPM links an executable's entry point as FuzzVirtqueue_main; hand control to libFuzzer.
@_cdecl("FuzzVirtqueue_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
