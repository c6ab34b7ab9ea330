import Glibc
import Synchronization

/// A real registry (Debian's docker-registry) on 127.0.0.1 with a free port, for image tests;
/// Tests/images/registry.sh does the work, so shell scripts can use the same fixture:
///
///     let registry = try TestRegistry(auth: .basic(user: "alice", password: "secret"))
///     try registry.push(TestImages.layout(), tag: "scratch", as: "scratch:latest", credentials: "alice:secret")
///     // pull "\(registry.address)/scratch:latest"; registry.stop() (or let it go out of scope)
public final class TestRegistry: Sendable {
    public enum Auth {
        case none
        /// htpasswd basic auth.
        case basic(user: String, password: String)
        /// The token flow: a token service whose RS256 tokens the registry verifies.
        /// `anonymousPull` lets it give pull tokens without credentials.
        case token(user: String, password: String, anonymousPull: Bool)
    }

    /// Where the registry's config, logs (registry.log, token.log) and storage live.
    public let directory: String
    /// "127.0.0.1:PORT"
    public let address: String

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public init(auth: Auth = .none) throws {
        directory = try TestImages.temporaryDirectory("kiln-registry")
        var args = [TestImages.script("registry.sh"), "start", directory, "--owner", "\(getpid())"]
        switch auth {
        case .none: break
        case .basic(let user, let password): args += ["--basic", "\(user):\(password)"]
        case .token(let user, let password, let anonymous): args += ["--token", "\(user):\(password)"] + (anonymous ? ["--anonymous-pull"] : [])
        }
        address = try TestImages.run(args).split(separator: "\n").last.map(String.init) ?? ""
    }

    deinit { stop() }

    /// Stops the servers and removes the registry's directory.
    public func stop() {
        _ = try? TestImages.run([TestImages.script("registry.sh"), "stop", directory])
        _ = try? TestImages.run(["rm", "-rf", directory])
    }

    /// Pushes `tag` of an OCI layout as NAME:TAG (an index tag with all its images).
    public func push(_ layout: String, tag: String, as name: String, credentials: String? = nil) throws {
        _ = try TestImages.run([TestImages.script("push.sh"), layout, tag, address, name] + (credentials.map { [$0] } ?? []))
    }

    /// The file in the registry's storage holding a blob (to tamper with it).
    public func blobFile(_ digest: String) -> String {
        let hex = String(digest.dropFirst("sha256:".count))
        return directory + "/storage/docker/registry/v2/blobs/sha256/" + String(hex.prefix(2)) + "/" + hex + "/data"
    }

    /// How many blob GETs the registry has answered (from its log).
    public func blobGets() -> Int {
        (TestFiles.read(directory + "/registry.log") ?? "").split(separator: "\n").filter {
            $0.contains("response completed") && $0.contains("http.request.method=GET") && $0.contains("/blobs/sha256:")
        }.count
    }
}

/// The test images of Tests/images/make-images.sh (tags scratch, layered, config,
/// scratch-arm64, multi; see the script), built once per test process.
public enum TestImages {
    private static let built = Mutex<String?>(nil)
    /// One directory per test process for everything the fixtures make; removed at exit.
    private static let root = Mutex<String?>(nil)

    /// The OCI layout directory holding the test images.
    public static func layout() throws -> String {
        try built.withLock { built in
            if let built { return built }
            let dir = try temporaryDirectory("kiln-test-images")
            let path = try run([script("make-images.sh"), dir]).split(separator: "\n").last.map(String.init) ?? ""
            built = path
            return path
        }
    }

    /// Tests/images/NAME in this checkout.
    public static func script(_ name: String) -> String {
        var path = #filePath // <root>/Tests/Support/TestRegistry.swift
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/Tests/images/" + name
    }

    /// A new directory for a test (stores, registries, images), inside this process's scratch
    /// directory, which is removed when the process exits.
    public static func temporaryDirectory(_ prefix: String) throws -> String {
        let parent = try root.withLock { (root) throws -> String in
            if let root { return root }
            let made = try makeDirectory("/tmp/kiln-images-test-XXXXXX")
            root = made
            atexit {
                guard let dir = TestImages.root.withLock({ $0 }) else { return }
                _ = try? TestImages.run(["rm", "-rf", "--one-file-system", dir])
            }
            return made
        }
        return try makeDirectory(parent + "/\(prefix)-XXXXXX")
    }

    private static func makeDirectory(_ pattern: String) throws -> String {
        var template = Array(pattern.utf8CString)
        guard let p = mkdtemp(&template) else { throw TestRegistry.Failure(description: "mkdtemp: \(String(cString: strerror(errno)))") }
        return String(cString: p)
    }

    /// Runs a program (found on PATH, or a script path run by bash), returns its stdout; throws
    /// with its stderr when it fails.
    @discardableResult
    public static func run(_ argv: [String], seconds: Double = 120) throws -> String {
        let executable = argv[0].hasSuffix(".sh") ? "bash" : argv[0]
        let arguments = argv[0].hasSuffix(".sh") ? argv : Array(argv.dropFirst())
        let process = try KilnProcess(arguments, executable: executable)
        process.closeInput()
        let status = try process.wait(seconds: seconds)
        guard status == 0 else {
            throw TestRegistry.Failure(description: "\(argv.joined(separator: " ")) exited \(status): \(process.errorOutput)")
        }
        var out = Substring(process.output)
        while let last = out.last, last.isWhitespace { out = out.dropLast() }
        return String(out)
    }
}
