import CLinux
import Glibc

/// Runs a helper program (e.g. the kernel build script) with stdin closed and
/// stderr inherited, returning its exit status and what it wrote on stdout.
public func runProgram(_ argv: [String], environment: [String]? = nil) throws(Errno) -> (status: Int32, stdout: [UInt8]) {
    var fds: [Int32] = [0, 0]
    _ = try once("pipe") { kiln_pipe2(&fds, O_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)

    let cArgs = argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    let envStrings = environment.map { $0.map { strdup($0) } + [nil] }
    defer { envStrings?.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = cArgs.withUnsafeBufferPointer { args in
        if let envStrings {
            return envStrings.withUnsafeBufferPointer { env in
                posix_spawnp(&pid, argv[0], &actions, nil, UnsafeMutablePointer(mutating: args.baseAddress!),
                             UnsafeMutablePointer(mutating: env.baseAddress!))
            }
        }
        return posix_spawnp(&pid, argv[0], &actions, nil, UnsafeMutablePointer(mutating: args.baseAddress!), environ)
    }
    Glibc.close(fds[1])
    defer { Glibc.close(fds[0]) }
    if rc != 0 { throw Errno(rc, call: "spawn \(argv[0])") }

    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fds[0], $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        output += buffer[0..<n]
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    let exitCode = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (exitCode, output)
}

/// The executable `name` in the directory of the running one (kiln's helpers are installed beside
/// it, and a test runner sits in the same build directory as they), or nil.
public func executableBesideSelf(_ name: String) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    let me = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let slash = me.lastIndex(of: "/") else { return nil }
    let sibling = String(me[..<slash]) + "/" + name
    return access(sibling, X_OK) == 0 ? sibling : nil
}
