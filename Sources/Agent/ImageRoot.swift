import CLinux
import Glibc
import LinuxSys

/// Booting an image that knows nothing of Kiln (docs/images.md, "Booting an image"): the kernel
/// starts the agent from Kiln's own initramfs, and the agent, as PID 1, mounts the image's disk
/// (named by `kiln.root=` on the kernel command line) and makes it the root before it serves.
/// Nothing of the image runs before the host asks for a command.
public enum ImageRoot {
    public struct Parameters: Equatable, Sendable {
        public var device: String
        public var type: String
        /// Filesystem-specific mount data (`kiln.rootflags=`), passed to mount(2) as is.
        public var data: String?

        public init(device: String, type: String = "ext4", data: String? = nil) {
            self.device = device; self.type = type; self.data = data
        }
    }

    /// Where the image is mounted before it becomes the root.
    static let mountPoint = "/kiln-root"

    /// `kiln.root=DEVICE`, `kiln.rootfstype=TYPE` (default ext4) and `kiln.rootflags=DATA` from a
    /// kernel command line; nil without `kiln.root=`.
    public static func parameters(cmdline: String) -> Parameters? {
        var device: String?, type = "ext4", data: String?
        for word in cmdline.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }) {
            guard let eq = word.firstIndex(of: "=") else { continue }
            let value = String(word[word.index(after: eq)...])
            switch word[..<eq] {
            case "kiln.root": device = value
            case "kiln.rootfstype": type = value
            case "kiln.rootflags": data = value
            default: break
            }
        }
        guard let device, !device.isEmpty else { return nil }
        return Parameters(device: device, type: type, data: data)
    }

    /// As PID 1: when the kernel command line names `kiln.root=`, mounts that disk read-write and
    /// switches to it. A failure is printed on the console and ends the VM (the host then reports
    /// the console's last lines); there is nothing useful to serve from the initramfs.
    public static func enterIfRequested() {
        _ = mkdir("/proc", 0o555)
        guard kiln_mount("proc", "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil) == 0 || errno == EBUSY else {
            return fail("mount /proc: \(String(cString: strerror(errno)))")
        }
        let cmdline = readSmallFile("/proc/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? ""
        guard let p = parameters(cmdline: cmdline) else {
            _ = kiln_umount2("/proc", Int32(MNT_DETACH)) // GuestInit mounts it where it belongs
            return
        }
        // The initramfs's PID 1 is /init: name it as the image-booted agent was named.
        kiln_set_thread_name("kiln-agent")
        do throws(Failed) { try enter(p) } catch { fail(error.message) }
    }

    struct Failed: Error { var message: String }

    static func enter(_ p: Parameters) throws(Failed) {
        func check(_ rc: Int32, _ what: String) throws(Failed) {
            if rc != 0 { throw Failed(message: "\(what): \(String(cString: strerror(errno)))") }
        }
        _ = mkdir("/dev", 0o755)
        if kiln_mount("devtmpfs", "/dev", "devtmpfs", UInt(MS_NOSUID), "mode=0755") != 0 && errno != EBUSY {
            throw Failed(message: "mount /dev: \(String(cString: strerror(errno)))")
        }
        // Built-in virtio drivers probe before init runs; the wait covers a slow probe, not a missing disk.
        var waited = 0
        while access(p.device, F_OK) != 0 {
            if waited >= 10_000 { throw Failed(message: "no disk \(p.device) (kiln.root)") }
            usleep(10_000)
            waited += 10
        }
        _ = mkdir(mountPoint, 0o755)
        try check(kiln_mount(p.device, mountPoint, p.type, 0, p.data), "mount \(p.device) (\(p.type)) on \(mountPoint)")
        // The image gets its own /proc and /dev from GuestInit once it is the root.
        _ = kiln_umount2("/dev", Int32(MNT_DETACH))
        _ = kiln_umount2("/proc", Int32(MNT_DETACH))
        try check(chdir(mountPoint), "chdir \(mountPoint)")
        if kiln_guest_pivot_root(".", ".") == 0 {
            // A root on a disk: the old root is stacked under the new one; detach it.
            try check(kiln_umount2(".", Int32(MNT_DETACH)), "detach the old root")
        } else {
            // The initramfs (rootfs) cannot be pivoted away (EINVAL): free its files, move the
            // image's mount over it and chroot into it, as switch_root(8) does.
            guard errno == EINVAL else { throw Failed(message: "pivot_root: \(String(cString: strerror(errno)))") }
            var root = stat()
            try check(lstat("/", &root), "stat /")
            removeTree("/", device: root.st_dev)
            try check(kiln_mount(".", "/", nil, UInt(MS_MOVE), nil), "move \(mountPoint) to /")
            try check(chroot("."), "chroot")
        }
        try check(chdir("/"), "chdir /")
    }

    /// Removes what lies under `path` on `device` (the initramfs), leaving mount points alone.
    static func removeTree(_ path: String, device: dev_t) {
        guard let dir = opendir(path) else { return }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names {
            let full = (path == "/" ? "" : path) + "/" + name
            var st = stat()
            guard lstat(full, &st) == 0, st.st_dev == device else { continue }
            if st.st_mode & S_IFMT == S_IFDIR {
                removeTree(full, device: device)
                _ = rmdir(full)
            } else {
                _ = unlink(full)
            }
        }
    }

    static func fail(_ message: String) {
        writeRaw(2, "kiln-agent: cannot enter the image's root: \(message)\n")
        _ = kiln_reboot() // reboot=k: the VM exits and the host shows this line
        while true { pause() }
    }
}
