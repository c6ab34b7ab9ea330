import CLinux
import Glibc
import LinuxSys
import VMMProtocol

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
        do {
            switch try VMMCommand.parse(line) {
            case .snapshot(let directory?):
                let s = try machine.snapshot(to: directory)
                return "ok memory=\(s.memoryBytes) written=\(s.memoryBytesWritten) state=\(s.stateBytes)"
            case .files, .snapshot(nil): return "error: \(VMMCommand.ParseError(text: line))"
            case let command: return try execute(command, on: machine)
            }
        } catch {
            return "error: \(error)"
        }
    }

    /// pause, resume and status, the same on every control socket and channel.
    static func execute(_ command: VMMCommand, on machine: Machine) throws(MachineError) -> String {
        switch command {
        case .pause: try machine.pause(); return "ok"
        case .resume: try machine.resume(); return "ok"
        case .status: return "ok \(machine.isPaused ? "paused" : "running")"
        case .files, .snapshot: return "error: '\(command.text)' is not served here"
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
