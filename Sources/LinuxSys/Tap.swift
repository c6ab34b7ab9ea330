import CLinux
import Glibc

/// A TAP network interface opened through /dev/net/tun: Ethernet frames in and out of the
/// host's network stack. Each frame carries a 12-byte virtio_net_hdr (IFF_VNET_HDR with
/// TUNSETVNETHDRSZ 12), the same header a virtio 1.x driver puts in front of its frames.
///
/// The interface is never made persistent: one Kiln created disappears when `fd` is closed
/// (explicitly, or by the kernel when the process exits); an existing persistent one stays.
public struct Tap: ~Copyable, Sendable {
    public static let vnetHeaderSize: Int32 = 12
    /// The name to ask for when any free one will do: the kernel fills in the number.
    public static let autoName = "kiln%d"

    public let fd: FileDescriptor
    /// The interface's name as the kernel reports it (kiln0, kiln1, ... for `autoName`).
    public let name: String
    /// Whether opening it created the interface (rather than attaching to a persistent one).
    public let created: Bool

    /// Opens (or creates) the TAP interface `name`, nonblocking.
    public init(name: String) throws(Errno) {
        guard !name.isEmpty, name.utf8.count < Int(KILN_IFNAMSIZ) else { throw Errno(EINVAL, call: "TAP name '\(name)'") }
        let created = name.contains("%") || if_nametoindex(name) == 0
        let fd = try FileDescriptor.open("/dev/net/tun", O_RDWR | O_NONBLOCK)
        var actual = [CChar](repeating: 0, count: Int(KILN_IFNAMSIZ))
        _ = try once("TUNSETIFF \(name)") {
            kiln_tun_set_iff(fd.raw, name, KILN_IFF_TAP | KILN_IFF_NO_PI | KILN_IFF_VNET_HDR, &actual)
        }
        var size = Tap.vnetHeaderSize
        _ = try once("TUNSETVNETHDRSZ") { fd.ioctl(KILN_TUNSETVNETHDRSZ, &size) }
        self.name = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.fd = fd
        self.created = created
    }

    /// Gives the host side `address/prefix` and brings the link up. Runs `ip` (iproute2)
    /// rather than speaking rtnetlink: two commands at start-up are not worth a netlink client.
    /// `replace`, not `add`: a persistent TAP keeps the address an earlier VM gave it.
    public func configureHost(address: String, prefix: Int) throws(Errno) {
        try Tap.ip(["addr", "replace", "\(address)/\(prefix)", "dev", name])
        try bringUp()
    }

    /// Brings the host side of the link up (a new TAP starts down).
    public func bringUp() throws(Errno) {
        try Tap.ip(["link", "set", name, "up"])
    }

    /// Tells the TAP which offloads its reader accepts (TUNSETOFFLOAD): with `.checksum` the kernel
    /// may hand over frames with a partial checksum, with `.tso4`/`.tso6` (which need `.checksum`)
    /// TCP segments up to 64 KiB. Frames written to a TAP may carry offloads whatever this says.
    public static func setOffloads(_ offloads: TapOffloads, fd: Int32) throws(Errno) {
        _ = try once("TUNSETOFFLOAD \(offloads.rawValue)") { kiln_ioctl_int(fd, KILN_TUNSETOFFLOAD, UInt(offloads.rawValue)) }
    }

    /// Hands the descriptor to its new owner (the device); the interface lives as long as it does.
    public consuming func descriptor() -> FileDescriptor { fd }

    private static func ip(_ args: [String]) throws(Errno) {
        let result = try runProgram(["ip"] + args)
        if result.status != 0 { throw Errno(EIO, call: "ip \(args.joined(separator: " ")) exited with \(result.status)") }
    }
}

/// The TUN_F_* offload flags of TUNSETOFFLOAD (linux/if_tun.h).
public struct TapOffloads: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let checksum = TapOffloads(rawValue: KILN_TUN_F_CSUM)
    public static let tso4 = TapOffloads(rawValue: KILN_TUN_F_TSO4)
    public static let tso6 = TapOffloads(rawValue: KILN_TUN_F_TSO6)
    public static let tsoECN = TapOffloads(rawValue: KILN_TUN_F_TSO_ECN)
}
