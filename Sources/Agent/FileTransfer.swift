import AgentProtocol
import CLinux
import Glibc

/// A WriteFile in progress: data goes to a temporary file beside the target, which replaces the
/// target only when the host sends FileEnd (docs/agent-protocol.md, "Files").
final class IncomingFile {
    let stream: UInt32
    let request: WriteFile
    let temporaryPath: String
    var fd: Int32
    var window = ReceiveWindow()
    var bytes: UInt64 = 0

    private init(stream: UInt32, request: WriteFile, temporaryPath: String, fd: Int32) {
        self.stream = stream; self.request = request; self.temporaryPath = temporaryPath; self.fd = fd
    }

    static func open(_ request: WriteFile, stream: UInt32) -> Result<IncomingFile, Failure> {
        let path = request.path
        guard !path.isEmpty, !path.utf8.contains(0), !path.hasSuffix("/") else {
            return .failure(Failure(errno: EINVAL, message: "invalid path '\(path)'"))
        }
        let directory = parent(of: path)
        if request.options.contains(.createParents), let failure = makeDirectories(directory, uid: request.uid, gid: request.gid) {
            return .failure(failure)
        }
        if request.options.contains(.exclusive) {
            var st = stat()
            if lstat(path, &st) == 0 { return .failure(Failure(errno: EEXIST, message: "\(path) exists")) }
        }
        var template = Array("\(directory)/.kiln-write-XXXXXX".utf8CString)
        let fd = kiln_mkostemp(&template, O_CLOEXEC)
        guard fd >= 0 else { return .failure(errnoFailure("cannot create a file in \(directory)")) }
        return .success(IncomingFile(stream: stream, request: request, temporaryPath: template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }, fd: fd))
    }

    func write(_ data: [UInt8]) -> Failure? {
        var offset = 0
        while offset < data.count {
            let n = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, data.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return errnoFailure("cannot write \(request.path)")
            }
            offset += n
        }
        bytes += UInt64(data.count)
        return nil
    }

    /// Applies mode and owner, syncs, and puts the file in place.
    func finish(setIDs: Bool) -> Failure? {
        if fchmod(fd, mode_t(request.mode)) != 0 { return errnoFailure("chmod \(request.path)") }
        if setIDs && fchown(fd, request.uid, request.gid) != 0 { return errnoFailure("chown \(request.path)") }
        // chown clears setuid/setgid bits: apply the mode once more.
        if setIDs && fchmod(fd, mode_t(request.mode)) != 0 { return errnoFailure("chmod \(request.path)") }
        if fsync(fd) != 0 { return errnoFailure("fsync \(request.path)") }
        Glibc.close(fd)
        fd = -1
        if request.options.contains(.exclusive) {
            // link() fails if the target appeared meanwhile: never replaces anything.
            if link(temporaryPath, request.path) != 0 { return errnoFailure("cannot create \(request.path)") }
            unlink(temporaryPath)
        } else if rename(temporaryPath, request.path) != 0 {
            return errnoFailure("cannot replace \(request.path)")
        }
        return nil
    }

    /// Removes the partial file (after an error or Cancel).
    func abandon() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        unlink(temporaryPath)
    }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let p = String(path[..<slash])
        return p.isEmpty ? "/" : p
    }

    static func makeDirectories(_ directory: String, uid: UInt32, gid: UInt32) -> Failure? {
        Filesystem.makeDirectories(directory, mode: 0o755, uid: uid, gid: gid)
    }
}

/// A ReadFile in progress: FileInfo, then FileData within the host's credit, then FileEnd.
final class OutgoingFile {
    let stream: UInt32
    var fd: Int32
    var window = SendWindow()

    init(stream: UInt32, fd: Int32) { self.stream = stream; self.fd = fd }

    static func open(_ path: String, stream: UInt32) -> Result<(OutgoingFile, FileInfo), Failure> {
        guard !path.isEmpty, !path.utf8.contains(0) else { return .failure(Failure(errno: EINVAL, message: "invalid path '\(path)'")) }
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else { return .failure(errnoFailure("cannot open \(path)")) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let f = errnoFailure("stat \(path)"); Glibc.close(fd); return .failure(f) }
        switch st.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: Glibc.close(fd); return .failure(Failure(errno: EISDIR, message: "\(path) is a directory"))
        default: Glibc.close(fd); return .failure(Failure(errno: EINVAL, message: "\(path) is not a regular file"))
        }
        let info = FileInfo(mode: UInt32(st.st_mode), size: UInt64(st.st_size), uid: st.st_uid, gid: st.st_gid)
        return .success((OutgoingFile(stream: stream, fd: fd), info))
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}

func errnoFailure(_ what: String) -> Failure {
    let e = errno
    return Failure(errno: e, message: "\(what): \(String(cString: strerror(e)))")
}
