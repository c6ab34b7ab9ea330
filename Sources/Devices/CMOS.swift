import Glibc
import Synchronization

/// The PC's CMOS real-time clock at ports 0x70 (index) and 0x71 (data), read-only:
/// it tells the guest the host's UTC time so its clock starts right without NTP.
public final class CMOS: PortDevice {
    public static let basePort: UInt16 = 0x70
    private let index = Mutex<UInt8>(0)
    private let now: @Sendable () -> time_t

    public init(now: @escaping @Sendable () -> time_t = { time(nil) }) { self.now = now }

    public func read(offset: UInt16, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        if offset == 0 { data[0] = index.withLock { $0 }; return }
        data[0] = register(index.withLock { $0 } & 0x7F)
    }

    public func write(offset: UInt16, from data: UnsafeRawBufferPointer) {
        if offset == 0, let v = data.first { index.withLock { $0 = v } }
    }

    func register(_ r: UInt8) -> UInt8 {
        var t = now()
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func bcd(_ v: Int32) -> UInt8 { UInt8((v / 10) << 4 | (v % 10)) }
        switch r {
        case 0x00: return bcd(tm.tm_sec)
        case 0x02: return bcd(tm.tm_min)
        case 0x04: return bcd(tm.tm_hour)
        case 0x06: return bcd(tm.tm_wday + 1)
        case 0x07: return bcd(tm.tm_mday)
        case 0x08: return bcd(tm.tm_mon + 1)
        case 0x09: return bcd(tm.tm_year % 100)
        case 0x32: return bcd((tm.tm_year + 1900) / 100)
        case 0x0A: return 0x26 // no update in progress, 32.768 kHz base
        case 0x0B: return 0x02 // 24-hour, BCD
        case 0x0D: return 0x80 // battery good
        default: return 0
        }
    }
}
