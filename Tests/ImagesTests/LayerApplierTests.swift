import Foundation
import Glibc
import Images
import Testing

/// Layers applied as root (as the integrator runs them): ownership and device nodes need it.
@Suite struct LayerApplierTests {
    /// A scratch dir with `root/` to unpack into and `canary/` beside it that no layer may touch.
    final class Fixture {
        let s = Scratch()
        var root: String { s.file("root") }
        var canary: String { s.file("canary") }

        init() throws {
            try #require(geteuid() == 0, "the layer tests run as root (ownership, device nodes)")
            mkdir(root, 0o755); mkdir(canary, 0o755)
            s.write("canary/secret", Array("untouched".utf8))
        }

        func apply(_ layers: [[E]], limits: UnpackLimits = .init(), compression: LayerCompression = .none) throws {
            let applier = try LayerApplier(root: root, limits: limits)
            for (i, entries) in layers.enumerated() { try applier.apply(try s.layer("layer\(i)", entries, compression: compression)) }
        }

        /// Applies `layers`, expecting the last to be refused; returns the error.
        func refused(_ layers: [[E]], limits: UnpackLimits = .init()) throws -> UnpackError {
            do {
                try apply(layers, limits: limits)
            } catch let error as UnpackError {
                #expect(tree(canary) == ["secret"] && contents(canary + "/secret") == "untouched", "the canary beside the root changed")
                #expect(!exists("/etc/kiln-evil") && !exists("/tmp/kiln-evil"))
                return error
            }
            throw ToolFailed(text: "layer applied without an error")
        }
    }

    @Test func everyKindOfEntryKeepsItsMetadata() throws {
        let f = try Fixture()
        try f.apply([[
            .dir("usr/"), .dir("usr/bin/"),
            E(name: "usr/bin/sudo", data: "#!", mode: 0o4755, uid: 0, gid: 0, mtime: 1_234_567_890),
            E(name: "home/user/notes", data: "mine", mode: 0o600, uid: 1000, gid: 1000),
            E(name: "tmp", type: "5", mode: 0o1777),
            .symlink("bin", "usr/bin"), .symlink("etc/abs", "/etc/passwd"),
            .hardlink("usr/bin/sudo2", "usr/bin/sudo"),
            E(name: "dev/null", type: "3", mode: 0o666, major: 1, minor: 3),
            E(name: "dev/sda1", type: "4", mode: 0o660, gid: 6, major: 8, minor: 1),
            E(name: "run/pipe", type: "6", mode: 0o620),
            E(name: "usr/bin/ping", data: "elf", mode: 0o755, xattrs: ["user.kiln": "yes"]),
        ]])
        let r = f.root
        let sudo = try #require(Node(r + "/usr/bin/sudo"))
        #expect(sudo.type == S_IFREG && sudo.mode == 0o4755 && sudo.mtime == 1_234_567_890 && contents(r + "/usr/bin/sudo") == "#!")
        #expect(Node(r + "/usr/bin/sudo2")?.inode == sudo.inode)
        let notes = try #require(Node(r + "/home/user/notes"))
        #expect(notes.uid == 1000 && notes.gid == 1000 && notes.mode == 0o600)
        #expect(Node(r + "/tmp")?.mode == 0o1777 && Node(r + "/tmp")?.type == S_IFDIR)
        #expect(linkTarget(r + "/bin") == "usr/bin" && linkTarget(r + "/etc/abs") == "/etc/passwd")
        #expect(Node(r + "/dev/null")?.type == S_IFCHR && Node(r + "/dev/null")?.rdev == 0x103 && Node(r + "/dev/null")?.mode == 0o666)
        #expect(Node(r + "/dev/sda1")?.type == S_IFBLK && Node(r + "/dev/sda1")?.gid == 6)
        #expect(Node(r + "/run/pipe")?.type == S_IFIFO && Node(r + "/run/pipe")?.mode == 0o620)
        #expect(xattr(r + "/usr/bin/ping", "user.kiln") == "yes")
        // Directories keep the time their entry says although children were made after it.
        #expect(Node(r + "/usr/bin")?.mtime == 1_600_000_000)
        // Parents no entry named are made 0755 root's.
        #expect(Node(r + "/home/user")?.mode == 0o755)
    }

    @Test func whiteoutsRemoveLowerLayersOnly() throws {
        let f = try Fixture()
        try f.apply([
            [.file("a/x", "x"), .file("a/y", "y"), .file("b/z"), .file("c/keep"), .file("d/old"), .dir("d/sub/"), .file("d/sub/old"),
             .file("e/file"), .file("g/old")],
            // The same layer's own entries survive its whiteouts, whatever their order.
            [.file("d/new", "new"), .file("d/sub/new"), .file("a/.wh.x"), .file(".wh.b"), .file("d/.wh..wh..opq"),
             .file("c/.wh.not-there"), .file("e/.wh.file"), .file("e/file", "again"), .file("f/.wh.nothing"),
             .file("g/new"), .file(".wh.g")],
        ])
        #expect(tree(f.root) == ["a", "a/y", "c", "c/keep", "d", "d/new", "d/sub", "d/sub/new", "e", "e/file", "g", "g/new"])
        #expect(contents(f.root + "/d/new") == "new" && contents(f.root + "/e/file") == "again")
    }

    @Test func upperLayersReplaceFilesDirectoriesAndLinks() throws {
        let f = try Fixture()
        try f.apply([
            [.file("a", "file"), .dir("b/"), .file("b/inside"), .symlink("c", "/etc"), .file("d", "old"), .hardlink("d2", "d")],
            [.dir("a/"), .file("b", "now a file"), .file("c", "not a link"), .file("d", "new")],
        ])
        #expect(Node(f.root + "/a")?.type == S_IFDIR && contents(f.root + "/b") == "now a file")
        #expect(Node(f.root + "/c")?.type == S_IFREG && contents(f.root + "/c") == "not a link")
        // The hard link kept the old inode: writing d replaced it rather than writing through d2.
        #expect(contents(f.root + "/d") == "new" && contents(f.root + "/d2") == "old")
    }

    @Test func compressedLayers() throws {
        for compression in [LayerCompression.gzip, .zstd] {
            let f = try Fixture()
            try f.apply([[.file("etc/os-release", "ID=kiln\n")], [.file("etc/.wh.os-release"), .file("etc/hostname", "h")]], compression: compression)
            #expect(tree(f.root) == ["etc", "etc/hostname"])
        }
    }

    @Test func corruptAndTruncatedGzipLayersNameTheLayer() throws {
        let f = try Fixture()
        let good = try f.s.layer("g", [.file("big", String(repeating: "data ", count: 20000))], compression: .gzip)
        var bytes = f.s.bytes("g.tar.gz")
        f.s.write("cut.tar.gz", Array(bytes[..<(bytes.count / 2)]))
        bytes[bytes.count / 2] ^= 0xFF
        f.s.write("bad.tar.gz", bytes)
        for name in ["cut", "bad"] {
            let applier = try LayerApplier(root: f.root)
            let layer = LayerSource(path: f.s.file("\(name).tar.gz"), compression: .gzip, digest: "sha256:\(name)")
            #expect { try applier.apply(layer) } throws: { error in
                let text = "\(error)"
                return text.hasPrefix("layer sha256:\(name)") && text.contains("gzip")
            }
        }
        _ = good
    }

    // MARK: Hostile layers

    @Test func dotDotAndAbsolutePathsAreRefused() throws {
        for name in ["../canary/evil", "a/../../canary/evil", "/tmp/kiln-evil", "./../canary/evil"] {
            let f = try Fixture()
            let error = try f.refused([[.file(name, "evil")]])
            #expect(error.reason == .unsafePath && error.layer == "sha256:layer0" && error.entry == name, "\(error)")
            #expect("\(error)".contains("sha256:layer0") && "\(error)".contains(name))
        }
    }

    @Test func entriesAreNeverWrittenThroughSymlinks() throws {
        let cases: [[[E]]] = [
            [[.symlink("a", "/etc"), .file("a/kiln-evil", "evil")]],
            [[.symlink("a", "../canary"), .file("a/secret", "overwritten")]],
            [[.symlink("a", "../canary")], [.file("a/secret", "overwritten")]],
            [[.dir("d/")], [.symlink("d", "../canary"), .file("d/secret", "overwritten")]],
            [[.symlink("a", "../canary"), .dir("a/sub/")]],
            [[.symlink("a", "../canary"), .symlink("a/new", "x")]],
            [[.symlink("a", "../canary"), E(name: "a/fifo", type: "6")]],
            [[.symlink("a", "../canary")], [.file("a/.wh.secret")]],
            [[.symlink("a", "../canary")], [.file("a/.wh..wh..opq")]],
            [[.symlink("a", "/tmp"), .hardlink("a/kiln-evil", "x")]],
        ]
        for layers in cases {
            let f = try Fixture()
            let error = try f.refused(layers)
            #expect(error.reason == .throughSymlink("a") || error.reason == .throughSymlink("d"), "\(error)")
        }
    }

    @Test func hardLinksOutsideTheRootAreRefused() throws {
        let f0 = try Fixture()
        for (target, expected) in [("../canary/secret", "outside"), ("/etc/passwd", "outside"), ("missing", "not in the layers"),
                                   ("dir", "is a directory")] {
            let f = try Fixture()
            let error = try f.refused([[.dir("dir/"), .hardlink("h", target)]])
            guard case .badHardLink(let why) = error.reason else { Issue.record("\(error)"); continue }
            #expect(why.contains(expected), "\(error)")
        }
        // Through a symbolic link to a directory outside: refused before linkat could follow it.
        let error = try f0.refused([[.symlink("s", f0.canary), .hardlink("h", "s/secret")]])
        #expect(error.reason == .throughSymlink("s"))
        #expect(!exists(f0.root + "/h"))
    }

    @Test func hardLinkToASymlinkLinksTheLinkItself() throws {
        let f = try Fixture()
        try f.apply([[.symlink("s", f.canary + "/secret"), .hardlink("h", "s")]])
        #expect(linkTarget(f.root + "/h") == f.canary + "/secret")
    }

    @Test func hugeEntriesAndImagesAreRefusedBeforeTheyAreWritten() throws {
        let f = try Fixture()
        let error = try f.refused([[.file("small", "ok"), .file("big", String(repeating: "x", count: 5000))]],
                                  limits: .init(maxEntrySize: 4096))
        #expect(error.reason == .entryTooLarge(size: 5000, limit: 4096) && error.entry == "big")
        #expect(!exists(f.root + "/big"))
        let g = try Fixture()
        let total = try g.refused([[.file("a", String(repeating: "x", count: 3000))], [.file("b", String(repeating: "x", count: 3000))]],
                                  limits: .init(maxTotalSize: 5000))
        #expect(total.reason == .imageTooLarge(limit: 5000) && total.layer == "sha256:layer1")
        let h = try Fixture()
        let count = try h.refused([[.file("a"), .file("b"), .file("c")]], limits: .init(maxEntries: 2))
        #expect(count.reason == .tooManyEntries(limit: 2))
    }

    @Test func aClaimedSizeLargerThanTheStreamIsATruncatedLayer() throws {
        let f = try Fixture()
        f.s.write("claims.tar", header(name: "f", type: UInt8(ascii: "0"), size: 1 << 30) + Array("short".utf8) + [UInt8](repeating: 0, count: 1531))
        let applier = try LayerApplier(root: f.root)
        #expect { try applier.apply(LayerSource(path: f.s.file("claims.tar"), compression: .none, digest: "sha256:claims")) } throws: {
            "\($0)" == "layer sha256:claims: entry 'f': archive truncated at byte 2048"
        }
    }

    @Test func gnuSparseFilesAreRefused() throws {
        let f = try Fixture()
        try f.s.run(["sh", "-c", "truncate -s 64M hole && tar --sparse --format=gnu -cf old.tar hole && tar --sparse --format=posix -cf pax.tar hole"])
        for name in ["old", "pax"] {
            let applier = try LayerApplier(root: f.root)
            #expect { try applier.apply(LayerSource(path: f.s.file("\(name).tar"), compression: .none, digest: "sha256:\(name)")) } throws: {
                ($0 as? UnpackError)?.reason == .sparse
            }
        }
        #expect(!exists(f.root + "/hole"))
    }

    @Test func whiteoutNamesCannotEscape() throws {
        for name in [".wh..", ".wh...", "a/.wh.."] {
            let f = try Fixture()
            try FileManager.default.createDirectory(atPath: f.root + "/a", withIntermediateDirectories: true)
            let error = try f.refused([[.file(name)]])
            #expect(error.reason == .unsafePath, "\(name): \(error)")
        }
    }
}
