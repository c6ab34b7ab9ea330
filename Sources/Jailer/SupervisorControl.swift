import CLinux
import Glibc
import LinuxSys
import VMMProtocol

/// `--control PATH` for a jailed VMM: the supervisor listens at PATH (the VMM could neither bind
/// it inside its jail nor write `snapshot DIR` there) and turns each line into a request on the
/// VMM's command channel; `snapshot DIR` becomes `JailedVMM.snapshot(to:)`, which creates the
/// files in DIR and hands the VMM their descriptors. Same lines and replies as an unjailed VMM's
/// control socket (docs/snapshot-format.md).
final class SupervisorControl: Sendable {
    let path: String
    private let stop: Int32

    init(path: String, vmm: JailedVMM) throws(JailedVMM.Failure) {
        let listener: Int32
        do { listener = try UnixSocket.listen(path: path, backlog: 8).release() }
        catch { throw JailedVMM.Failure(description: "cannot listen on control socket \(path): \(error)") }
        let stop = eventfd(0, Int32(EFD_CLOEXEC))
        guard stop >= 0 else {
            Glibc.close(listener); unlink(path)
            throw JailedVMM.Failure(description: "eventfd: \(Errno.current("eventfd"))")
        }
        self.path = path
        self.stop = stop
        do {
            _ = try LinuxSys.Thread.spawn(name: "kiln-control") {
                defer { Glibc.close(listener); Glibc.close(stop) }
                LineServer.serve(listener: listener, stop: stop) { SupervisorControl.execute($0, vmm: vmm) }
            }
        } catch {
            Glibc.close(listener); Glibc.close(stop); unlink(path)
            throw JailedVMM.Failure(description: "cannot start the control thread: \(error)")
        }
    }

    static func execute(_ line: String, vmm: JailedVMM) -> String {
        do throws(JailedVMM.Failure) {
            let command: VMMCommand
            do { command = try VMMCommand.parse(line) } catch { return "error: \(error)" }
            switch command {
            case .pause, .resume, .status: return try vmm.request(command)
            case .snapshot(let directory?): return try vmm.snapshot(to: directory)
            case .files, .snapshot(nil): return "error: \(VMMCommand.ParseError(text: line))"
            }
        } catch {
            return "error: \(error.description)"
        }
    }

    /// Stops serving and removes the socket file.
    func close() {
        var one: UInt64 = 1
        _ = write(stop, &one, 8)
        unlink(path)
    }
}
