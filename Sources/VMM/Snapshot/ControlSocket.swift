import CLinux
import Glibc
import LinuxSys

/// A Unix socket that controls a running machine with one command per line (docs/snapshot-format.md):
/// `pause`, `resume`, `snapshot DIR`, `status`; each answered with `ok[ detail]` or `error: why`.
/// Clients are served one at a time on a dedicated thread; the socket file is removed when the VM ends.
public final class ControlSocket: Sendable {
    public let path: String
    private let listener: Int32
    private let stop: Int32

    /// Listens on `path` (which must not exist) for `machine`.
    public init(path: String, machine: Machine) throws(MachineError) {
        do { listener = try UnixSocket.listen(path: path, backlog: 8).release() }
        catch { throw .config("cannot listen on control socket \(path): \(error)") }
        do { stop = try once("eventfd") { eventfd(0, Int32(EFD_CLOEXEC)) } }
        catch { Glibc.close(listener); throw .system(error) }
        self.path = path
        let listener = listener, stop = stop
        do {
            try machine.startControlThread {
                ControlSocket.serve(listener: listener, stop: stop, machine: machine)
            }
        } catch {
            Glibc.close(listener); Glibc.close(stop)
            throw error
        }
    }

    /// Stops serving and removes the socket file.
    public func close() {
        var one: UInt64 = 1
        _ = Glibc.write(stop, &one, 8)
        unlink(path)
    }

    deinit { unlink(path) }

    /// Runs one command line against `machine` and returns the reply line (without newline).
    public static func execute(_ line: String, on machine: Machine) -> String {
        let words = line.split(separator: " ", maxSplits: 1).map(String.init)
        do {
            switch words.first ?? "" {
            case "pause" where words.count == 1: try machine.pause(); return "ok"
            case "resume" where words.count == 1: try machine.resume(); return "ok"
            case "status" where words.count == 1: return "ok \(machine.isPaused ? "paused" : "running")"
            case "snapshot" where words.count == 2:
                let s = try machine.snapshot(to: words[1])
                return "ok memory=\(s.memoryBytes) written=\(s.memoryBytesWritten) state=\(s.stateBytes)"
            default: return "error: unknown command '\(line)' (pause, resume, status, snapshot DIR)"
            }
        } catch {
            return "error: \(error.description)"
        }
    }

    private static func serve(listener: Int32, stop: Int32, machine: Machine) {
        defer { Glibc.close(listener); Glibc.close(stop) }
        LineServer.serve(listener: listener, stop: stop) { execute($0, on: machine) }
    }
}

extension Machine {
    /// Starts kiln-control: the thread installs the control seccomp filter before `body` runs,
    /// and this returns once it has, so no control thread ever serves a request unfiltered.
    func startControlThread(_ body: @escaping @Sendable () -> Void) throws(MachineError) {
        let ready: Int32
        do { ready = try once("eventfd") { eventfd(0, Int32(EFD_CLOEXEC)) } } catch { throw .system(error) }
        defer { Glibc.close(ready) }
        let confinement = self.confinement
        do {
            _ = try Thread.spawn(name: "kiln-control") {
                let filtered = confinement.enter(.control)
                var one: UInt64 = filtered ? 1 : 2
                _ = Glibc.write(ready, &one, 8)
                if filtered { body() }
            }
        } catch {
            throw .system(error)
        }
        var value: UInt64 = 0
        while Glibc.read(ready, &value, 8) < 0 && errno == EINTR {}
        guard value == 1 else { throw .config(confinement.failed ?? "the control thread's seccomp filter did not install") }
    }
}
