import Glibc
import KilnTestSupport
import LinuxSys
import Testing

/// Runs a host tool and returns its status and stdout.
func sh(_ argv: [String]) throws -> (status: Int32, output: String) {
    let r = try runProgram(argv)
    return (r.status, String(decoding: r.stdout, as: UTF8.self))
}

/// A fresh ext4 image of `mib` MiB holding the files of `dir` (mkfs.ext4 -d).
func ext4Image(_ path: String, mib: Int, from dir: String) throws {
    unlink(path)
    let r = try sh(["mkfs.ext4", "-q", "-F", "-d", dir, path, "\(mib)M"])
    #expect(r.status == 0, "mkfs.ext4 failed")
}

/// virtio-blk end to end: ext4 on disks the guest mounts, and a root filesystem on virtio-blk.
@Suite(.blocking) struct DiskTests {
    let scratch = "/tmp/kiln-disk-test-\(getpid())"

    init() throws {
        #expect(access("/dev/kvm", R_OK | W_OK) == 0, "these tests need /dev/kvm (CI has it)")
        mkdir(scratch, 0o755)
        mkdir(scratch + "/empty", 0o755)
    }

    /// Also issue 14's chaos case: data the guest fsync'ed survives a SIGKILL of the VMM (the
    /// FLUSH is `fdatasync` on the image), found after the journal is replayed as a mount would.
    @Test func guestWritesReachTheImageAndReadOnlyDisksRefuseWritesAndFsyncedDataSurvivesAVMMKill() throws {
        let rw = scratch + "/rw.ext4", ro = scratch + "/ro.ext4"
        try ext4Image(rw, mib: 8, from: scratch + "/empty")
        try ext4Image(ro, mib: 8, from: scratch + "/empty")
        defer { unlink(rw); unlink(ro) }
        let payload = "kiln-block-payload-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let flushed = "kiln-fsynced-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

        let kiln = try KilnProcess(["boot", "--disk", rw, "--disk", "\(ro),ro"])
        try kiln.waitForLine("KILN-INIT-READY", seconds: 600)
        kiln.send("""
            mount -t ext4 /dev/vda /mnt && echo \(payload) > /mnt/hello.txt && sync && umount /mnt && echo WRITE-DONE
            mkdir -p /ro && mount -t ext4 -o ro /dev/vdb /ro && touch /ro/nope 2>/dev/null || echo RO-REFUSED
            mount -t ext4 /dev/vda /mnt && echo \(flushed) | /bin/busybox dd of=/mnt/flushed.txt conv=fsync 2>/dev/null && echo FSYNC-DONE

            """)
        try kiln.waitForLine("FSYNC-DONE", seconds: 300)
        #expect(kiln.outputLines.contains("WRITE-DONE"), "\(kiln.output.suffix(1500))")
        #expect(kiln.outputLines.contains("RO-REFUSED"))
        // The disk is still mounted, never unmounted or synced: the fsync stands behind the file.
        let vmm = kiln.children
        try #require(vmm.count == 1, "kiln boot's children: \(vmm)")
        kill(vmm[0], SIGKILL)
        #expect(try kiln.wait(seconds: 60) == 128 + SIGKILL)
        #expect(kiln.errorOutput.contains("the VMM was killed by signal 9"), "\(kiln.errorOutput)")
        // The host reads the files back out of the image with e2fsprogs, after e2fsck replays the
        // journal (0: clean, 1: errors corrected, such as the replay itself).
        let fsck = try sh(["e2fsck", "-fy", rw])
        #expect(fsck.status == 0 || fsck.status == 1, "e2fsck: \(fsck.output)")
        let back = try sh(["debugfs", "-R", "cat /hello.txt", rw])
        #expect(back.output == payload + "\n")
        let survived = try sh(["debugfs", "-R", "cat /flushed.txt", rw])
        #expect(survived.output == flushed + "\n")
        let untouched = try sh(["debugfs", "-R", "ls -p /", ro])
        #expect(!untouched.output.contains("nope"))
    }

    @Test func rootFilesystemOnVirtioBlockBoots() throws {
        // Kiln's initramfs contents as an ext4 root filesystem.
        let root = scratch + "/rootdir", image = scratch + "/root.ext4"
        mkdir(root, 0o755)
        let unpack = try sh(["sh", "-c", "cd \(root) && cpio -idm --quiet < /var/cache/kiln/initramfs/initramfs.cpio"])
        #expect(unpack.status == 0)
        try ext4Image(image, mib: 16, from: root)
        defer { unlink(image); _ = try? sh(["rm", "-rf", root]) }

        let kiln = try KilnProcess(["boot", "--kernel", "/var/cache/kiln/kernel/vmlinux", "--disk", image,
                                    "--cmdline", "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw rootfstype=ext4 init=/init"])
        try kiln.waitForLine("KILN-INIT-READY", seconds: 600)
        kiln.send("grep ' / ' /proc/mounts\nreboot -f\n")
        #expect(try kiln.wait(seconds: 300) == 0, "stderr: \(kiln.errorOutput)")
        #expect(kiln.outputLines.contains { $0.hasPrefix("/dev/root / ext4") || $0.hasPrefix("/dev/vda / ext4") },
                "\(kiln.output.suffix(1500))")
    }
}
