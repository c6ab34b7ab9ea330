import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing

/// Protocol 1.2's filesystem operations and user lookup against the real kiln-agent on the host,
/// in a temporary directory of their own.
@Suite final class AgentFilesystemTests {
    let agent: HostAgent
    let client: AgentClient
    let dir: String

    init() throws {
        agent = try HostAgent()
        client = try agent.connect()
        dir = agent.socketPath + ".d"
        _ = Self.shell("rm -rf \(dir) && mkdir -p \(dir)")
    }

    deinit { Self.shell("rm -rf \(dir)") }

    /// Sets a fixture up with the host's shell (not through the agent under test).
    @discardableResult
    static func shell(_ command: String) -> Int32 { system(command) }

    func failure(_ body: () async throws -> Void) async -> Failure? {
        do { try await body() } catch AgentClientError.failed(let f) { return f } catch { Issue.record("\(error)") }
        return nil
    }

    @Test func statReportsAFileADirectoryAndSymlinksAsThemselves() async throws {
        Self.shell("cd \(dir) && printf hello > f && chmod 4750 f && mkdir d && ln -s f link && ln -s nowhere broken")
        let f = try await client.stat("\(dir)/f")
        #expect(f.name == "f")
        #expect(f.path == "\(dir)/f")
        #expect(f.kind == .file)
        #expect(f.mode == 0o4750)
        #expect(f.size == 5)
        #expect(f.uid == getuid())
        #expect(f.owner == String(cString: getpwuid(getuid())!.pointee.pw_name))
        #expect(f.group == String(cString: getgrgid(getgid())!.pointee.gr_name))
        #expect(f.symlink == nil)
        var st = stat()
        _ = lstat("\(dir)/f", &st)
        #expect(f.modifiedSeconds == Int64(st.st_mtim.tv_sec) && f.modifiedNanoseconds == UInt32(st.st_mtim.tv_nsec))

        let d = try await client.stat("\(dir)/d/")
        #expect(d.kind == .directory && d.name == "d")

        let link = try await client.stat("\(dir)/link")
        #expect(link.kind == .symlink)
        #expect(link.symlink == EntryInfo.Symlink(target: "f", resolved: "\(dir)/f", targetKind: .file, targetMode: 0o4750))
        let broken = try await client.stat("\(dir)/broken")
        #expect(broken.symlink == EntryInfo.Symlink(target: "nowhere", resolved: "", targetKind: .other, targetMode: 0))

        let missing = await failure { _ = try await client.stat("\(dir)/missing") }
        #expect(missing?.errno == ENOENT)
    }

    @Test func listDirectoryGoesDownToTheRequestedDepth() async throws {
        Self.shell("cd \(dir) && mkdir -p a/b/c && touch top a/one a/b/two a/b/c/three && ln -s a linked")
        let one = try await client.listDirectory(dir)
        #expect(Set(one.map(\.name)) == ["a", "top", "linked"])
        #expect(Set(one.map(\.path)) == ["\(dir)/a", "\(dir)/top", "\(dir)/linked"])
        let two = try await client.listDirectory(dir + "/", depth: 2)
        #expect(Set(two.map(\.path)) == Set(["a", "top", "linked", "a/one", "a/b"].map { "\(dir)/\($0)" }))
        // Depth first: a directory's children come after it.
        let paths = two.map(\.path)
        #expect(paths.firstIndex(of: "\(dir)/a")! < paths.firstIndex(of: "\(dir)/a/b")!)
        // A symlink to a directory is listed, not entered; the requested path may be one.
        #expect(two.first { $0.name == "linked" }?.kind == .symlink)
        let all = try await client.listDirectory(dir, depth: 10)
        #expect(all.count == 8)
        let throughLink = try await client.listDirectory("\(dir)/linked")
        #expect(Set(throughLink.map(\.path)) == ["\(dir)/linked/one", "\(dir)/linked/b"])

        #expect(await failure { _ = try await client.listDirectory("\(dir)/top") }?.errno == ENOTDIR)
        #expect(await failure { _ = try await client.listDirectory("\(dir)/missing") }?.errno == ENOENT)
    }

    @Test func aLargeDirectoryArrivesComplete() async throws {
        // Long names so that the listing takes several Entries frames.
        let long = String(repeating: "n", count: 200)
        Self.shell("cd \(dir) && mkdir big && cd big && i=0; while [ $i -lt 3000 ]; do : > \(long)$i; i=$((i+1)); done")
        let entries = try await client.listDirectory("\(dir)/big")
        #expect(entries.count == 3000)
        let missing = Set((0..<3000).map { "\(long)\($0)" }).subtracting(entries.map(\.name))
        #expect(missing.isEmpty, "\(missing.count) names missing")
    }

    @Test func makeDirectoryCreatesParentsAndSaysWhetherItDid() async throws {
        #expect(try await client.makeDirectory("\(dir)/x/y/z", mode: 0o750, uid: getuid(), gid: getgid()) == true)
        for path in ["x", "x/y", "x/y/z"] {
            let e = try await client.stat("\(dir)/\(path)")
            #expect(e.kind == .directory && e.mode == 0o750, "\(path)")
        }
        #expect(try await client.makeDirectory("\(dir)/x/y/z") == false)
        Self.shell("touch \(dir)/file")
        #expect(await failure { _ = try await client.makeDirectory("\(dir)/file") }?.errno == EEXIST)
        #expect(await failure { _ = try await client.makeDirectory("\(dir)/file/sub") }?.errno == ENOTDIR)
    }

    @Test func renameMovesAndReportsTheDestination() async throws {
        Self.shell("printf abc > \(dir)/old")
        let e = try await client.rename("\(dir)/old", to: "\(dir)/new")
        #expect(e.path == "\(dir)/new" && e.name == "new" && e.kind == .file && e.size == 3)
        #expect(access("\(dir)/old", F_OK) != 0)
        #expect(await failure { _ = try await client.rename("\(dir)/old", to: "\(dir)/other") }?.errno == ENOENT)
    }

    @Test func removeDeletesATreeButNotWhatItsLinksPointTo() async throws {
        Self.shell("cd \(dir) && mkdir -p keep tree/a/b && touch keep/precious tree/a/b/f tree/g && ln -s ../keep tree/a/link")
        try await client.remove("\(dir)/tree")
        #expect(access("\(dir)/tree", F_OK) != 0)
        #expect(access("\(dir)/keep/precious", F_OK) == 0)
        try await client.remove("\(dir)/keep/precious")
        #expect(access("\(dir)/keep/precious", F_OK) != 0)
        // As envd's: a path that is not there is not an error.
        try await client.remove("\(dir)/never-was")
    }

    @Test func lookupUserReadsPasswdAndGroup() async throws {
        let root = try await client.lookupUser("root")
        #expect(root.uid == 0 && root.gid == 0)
        #expect(root.home == String(cString: getpwnam("root")!.pointee.pw_dir))
        #expect(root.groups.first == 0)
        #expect(try await client.lookupUser("0") == root)
        #expect(await failure { _ = try await client.lookupUser("no-such-user-kiln") }?.errno == ENOENT)
    }

    @Test func aWatchReportsChangesUntilCancelled() async throws {
        Self.shell("mkdir -p \(dir)/w/existing")
        let watch = try await client.watchDirectory("\(dir)/w", recursive: true)
        Self.shell("cd \(dir)/w && printf x > f && chmod 600 f && mkdir -p new/deeper && touch existing/e new/deeper/n && mv f g && rm g")
        var seen: [WatchEvent] = []
        let wanted: [WatchEvent] = [
            WatchEvent(.create, name: "f"), WatchEvent(.write, name: "f"), WatchEvent(.chmod, name: "f"),
            WatchEvent(.create, name: "new"), WatchEvent(.create, name: "existing/e"),
            WatchEvent(.rename, name: "f"), WatchEvent(.create, name: "g"), WatchEvent(.remove, name: "g"),
        ]
        for try await e in watch.events {
            seen.append(e)
            if wanted.allSatisfy(seen.contains) { break }
        }
        #expect(wanted.allSatisfy(seen.contains), "\(seen)")
        watch.cancel()
        for try await _ in watch.events {}
        // The connection goes on after the watch.
        #expect(try await client.stat("\(dir)/w").kind == .directory)
    }

    @Test func badRequestsFailAndTheAgentGoesOn() async throws {
        #expect(await failure { _ = try await client.stat("") }?.errno == EINVAL)
        #expect(await failure { _ = try await client.listDirectory("bad\u{0}path") }?.errno == EINVAL)
        #expect(await failure { try await client.remove("") }?.errno == EINVAL)
        #expect(await failure { _ = try await client.attach(pid: 0) }?.errno == ESRCH)
        // Not a process the agent started, even though it exists.
        #expect(await failure { try await client.signal(pid: UInt32(getpid()), SIGCONT) }?.errno == ESRCH)
        #expect(await failure { _ = try await client.watchDirectory("\(dir)/missing") }?.errno == ENOENT)
        #expect(try await client.ping().processes == 0)
    }
}
