import Foundation
import Glibc
import Images
import Testing

/// Root disks read back as a user of the disk would see them: debugfs on the ext4 image (no
/// mount needed), fsck.erofs --extract for EROFS.
@Suite struct RootDiskTests {
    static let lower: [E] = [
        .dir("etc/"), .file("etc/os-release", "ID=kiln\n"), .file("etc/motd", "old"),
        E(name: "usr/bin/sudo", data: "#!sudo", mode: 0o4755, uid: 0, gid: 0),
        .dir("var/cache/"), .file("var/cache/a"), .file("var/cache/b"),
        E(name: "home/user/.profile", data: "x", mode: 0o600, uid: 1000, gid: 1000),
        .symlink("bin", "usr/bin"), .symlink("etc/mtab", "/proc/self/mounts"),
        E(name: "dev/null", type: "3", mode: 0o666, major: 1, minor: 3),
    ]
    static let upper: [E] = [.file("etc/.wh.motd"), .file("var/cache/.wh..wh..opq"), .file("var/cache/c"), .file("etc/hostname", "box\n")]

    func debugfs(_ s: Scratch, _ disk: String, _ request: String) throws -> String {
        try s.run(["debugfs", "-R", request, disk])
    }

    @Test func ext4DiskHoldsTheMergedLayers() throws {
        try #require(geteuid() == 0, "root disks are made as root")
        let s = Scratch()
        let layers = [try s.layer("lower", Self.lower, compression: .gzip), try s.layer("upper", Self.upper, compression: .zstd)]
        let cache = s.file("cache")
        // A crashed builder's directory, with a link out of it that removal must not follow.
        try FileManager.default.createDirectory(atPath: cache + "/.build-sha256-0123abcd.ext4-Zq9xYw/rootfs", withIntermediateDirectories: true)
        s.write("keep", Array("keep".utf8))
        try FileManager.default.createSymbolicLink(atPath: cache + "/.build-sha256-0123abcd.ext4-Zq9xYw/rootfs/out", withDestinationPath: s.path)
        let disk = try RootDisk.build(layers: layers, cacheRoot: cache, key: "sha256:0123abcd")
        #expect(contents(s.file("keep")) == "keep")
        #expect(disk == cache + "/sha256-0123abcd.ext4")

        #expect(try debugfs(s, disk, "cat /etc/os-release") == "ID=kiln\n")
        #expect(try debugfs(s, disk, "cat /etc/hostname") == "box\n")
        let etc = try debugfs(s, disk, "ls /etc")
        #expect(!etc.contains("motd") && !etc.contains(".wh."))
        let cacheDir = try debugfs(s, disk, "ls /var/cache")
        #expect(cacheDir.contains("c") && !cacheDir.contains(" a ") && !cacheDir.contains(" b ") && !cacheDir.contains(".wh."))
        let sudo = try debugfs(s, disk, "stat /usr/bin/sudo")
        #expect(sudo.contains("Mode:  04755") && sudo.contains("User:     0"))
        let profile = try debugfs(s, disk, "stat /home/user/.profile")
        #expect(profile.contains("Mode:  0600") && profile.contains("User:  1000   Group:  1000"))
        #expect(try debugfs(s, disk, "stat /etc/mtab").contains("Fast link dest: \"/proc/self/mounts\""))
        #expect(try debugfs(s, disk, "stat /bin").contains("Fast link dest: \"usr/bin\""))
        #expect(try debugfs(s, disk, "stat /dev/null").contains("Type: character special"))

        // Room for the guest's writes, in a sparse file that costs the host far less.
        var st = stat()
        stat(disk, &st)
        #expect(st.st_size >= 4 << 30 && st.st_blocks * 512 < 64 << 20)
        // Nothing of the build is left beside the disk.
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: cache)) == ["sha256-0123abcd.ext4", "sha256-0123abcd.ext4.lock"])

        // Cached: a second build with no layers at all returns the same disk.
        #expect(try RootDisk.build(layers: [], cacheRoot: cache, key: "sha256:0123abcd") == disk)
        #expect(RootDisk.cached(cacheRoot: cache, key: "sha256:0123abcd") == disk)
        #expect(RootDisk.cached(cacheRoot: cache, key: "sha256:ffff") == nil)
    }

    @Test func erofsDiskHoldsTheMergedLayers() throws {
        try #require(geteuid() == 0, "root disks are made as root")
        let s = Scratch()
        let layers = [try s.layer("lower", Self.lower), try s.layer("upper", Self.upper)]
        let disk = try RootDisk.build(layers: layers, cacheRoot: s.file("cache"), key: "sha256:beef", options: .init(format: .erofs))
        #expect(disk.hasSuffix("/sha256-beef.erofs"))
        try s.run(["fsck.erofs", "--extract=\(s.file("out"))", disk])
        let out = s.file("out")
        #expect(tree(out) == ["bin", "dev", "dev/null", "etc", "etc/hostname", "etc/mtab", "etc/os-release", "home", "home/user",
                              "home/user/.profile", "usr", "usr/bin", "usr/bin/sudo", "var", "var/cache", "var/cache/c"])
        // fsck.erofs and dump.erofs 1.5 show permission bits without setuid (a loop mount shows 4755).
        #expect(Node(out + "/usr/bin/sudo")?.mode == 0o755 && Node(out + "/home/user/.profile")?.uid == 1000)
        #expect(linkTarget(out + "/etc/mtab") == "/proc/self/mounts")
    }

    @Test func aRefusedLayerLeavesNoDiskAndNoTemporaryFiles() throws {
        try #require(geteuid() == 0, "root disks are made as root")
        let s = Scratch()
        let evil = try s.layer("evil", [.symlink("a", "/etc"), .file("a/kiln-evil", "x")])
        let cache = s.file("cache")
        #expect { try RootDisk.build(layers: [evil], cacheRoot: cache, key: "sha256:bad") } throws: { error in
            "\(error)" == "layer sha256:evil: entry 'a/kiln-evil': refused: a is a symbolic link (entries are never written through one)"
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache) == ["sha256-bad.ext4.lock"])
        #expect(RootDisk.cached(cacheRoot: cache, key: "sha256:bad") == nil)
        #expect(!exists("/etc/kiln-evil"))
    }

    @Test func keysThatAreNotDigestsAreRefused() throws {
        for key in ["", "../x", "a/b", "sha256:x y"] {
            #expect(throws: RootDiskError.self) { try RootDisk.build(layers: [], cacheRoot: "/tmp", key: key) }
        }
    }

    @Test func layerSourcesFromManifestDescriptors() {
        let zstd = LayerSource(Descriptor(mediaType: MediaType.ociLayerZstd, digest: "sha256:aa", size: 1), path: "/blobs/aa")
        #expect(zstd == LayerSource(path: "/blobs/aa", compression: .zstd, digest: "sha256:aa"))
        #expect(LayerSource(Descriptor(mediaType: MediaType.dockerLayerGzip, digest: "sha256:bb", size: 1), path: "/b")?.compression == .gzip)
        #expect(LayerSource(Descriptor(mediaType: MediaType.ociConfig, digest: "sha256:cc", size: 1), path: "/c") == nil)
    }
}
