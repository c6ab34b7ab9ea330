import CLinux
import Glibc
import LinuxSys
import VMMProtocol

/// The jailed VMM's control channel: the supervisor's requests on a SOCK_SEQPACKET socket
/// (fd 4 in the jail; docs/security.md, "Supervisor and VMM"). One message per request, the
/// same commands as a control socket except that a snapshot's files come as descriptors,
/// because the VMM cannot see the host's directories:
///   `files`      -> `ok memory state disk-0.layer ...`: the files a snapshot is made of
///   `snapshot`   + one descriptor per file, in that order -> `ok ...`
///   `pause`, `resume`, `status` as on a control socket.
/// Served on kiln-control with the control filter; it ends when the supervisor closes its end.
public final class CommandChannel: Sendable {
    private let stop: Int32

    /// Serves `socket`: the supervisor's end of a socket pair, or (`listening`) a listening
    /// socket whose every connection is such a channel (a detached VMM's, docs/security.md).
    public init(socket: Int32, listening: Bool = false, machine: Machine) throws(MachineError) {
        do { stop = try once("eventfd") { eventfd(0, Int32(EFD_CLOEXEC)) } } catch { throw .system(error) }
        let stop = self.stop
        do {
            try machine.startControlThread { CommandChannel.serve(socket, listening: listening, stop: stop, machine: machine) }
        } catch {
            Glibc.close(stop)
            throw error
        }
    }

    public func close() {
        var one: UInt64 = 1
        _ = Glibc.write(stop, &one, 8)
    }

    /// Answers one request (its text and attached descriptors, which this closes).
    public static func execute(_ text: String, descriptors: [Int32], on machine: Machine) -> String {
        defer { descriptors.forEach { Glibc.close($0) } }
        let command: VMMCommand
        do { command = try VMMCommand.parse(text) } catch { return "error: \(error)" }
        switch command {
        case .files:
            return (["ok", SnapshotState.memoryFile, SnapshotState.stateFile] + machine.overlaySlots.map(SnapshotState.layerFile))
                .joined(separator: " ")
        case .snapshot(nil):
            let slots = machine.overlaySlots
            guard descriptors.count == 2 + slots.count else {
                return "error: snapshot needs \(2 + slots.count) descriptors (memory, state, \(slots.count) layers), got \(descriptors.count)"
            }
            let files = SnapshotFiles(memory: descriptors[0], state: descriptors[1],
                                      layers: Dictionary(uniqueKeysWithValues: zip(slots, descriptors[2...])))
            do {
                let s = try machine.snapshot(.files(files))
                return "ok memory=\(s.memoryBytes) written=\(s.memoryBytesWritten) state=\(s.stateBytes)"
            } catch {
                return "error: \(error.description)"
            }
        case .snapshot:
            // A jailed VMM sees no host directory: its supervisor passes the files instead.
            return "error: snapshot takes descriptors here, not a directory"
        case .pause, .resume, .status:
            do { return try ControlSocket.execute(command, on: machine) } catch { return "error: \(error.description)" }
        }
    }

    /// At most this many command connections at once on a listening socket (an adopter and
    /// the creator, say); more are closed at once.
    static let maxClients = 4

    private static func serve(_ socket: Int32, listening: Bool, stop: Int32, machine: Machine) {
        defer { Glibc.close(stop) }
        var clients: [Int32] = listening ? [] : [socket]
        while true {
            var fds = [pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            if listening { fds.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
            let first = fds.count
            fds += clients.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue } else { return } }
            if fds[0].revents != 0 { return }
            var gone: [Int32] = []
            for (k, client) in clients.enumerated() where fds[first + k].revents != 0 {
                if !answer(client, machine: machine) { gone.append(client) }
            }
            if listening && fds[1].revents != 0, let accepted = try? UnixSocket.accept(socket) {
                let fd = accepted.release()
                if clients.count < maxClients { clients.append(fd) } else { Glibc.close(fd) }
            }
            // A supervisor's channel ending ends the service; a listener's client just leaves.
            if !gone.isEmpty && !listening { return }
            for fd in gone { Glibc.close(fd) }
            clients.removeAll { gone.contains($0) }
        }
    }

    /// Answers one request on `socket`; false when the peer went away.
    private static func answer(_ socket: Int32, machine: Machine) -> Bool {
        let message: (bytes: [UInt8], descriptors: [Int32])
        do { message = try UnixSocket.receiveMessage(socket, capacity: 256, maxDescriptors: 16) }
        catch { return error.code == EAGAIN || error.code == EINTR }
        if message.bytes.isEmpty && message.descriptors.isEmpty { return false }
        let text = String(decoding: message.bytes, as: UTF8.self)
        let reply = execute(text, descriptors: message.descriptors, on: machine)
        return (try? UnixSocket.sendMessage(socket, Array(reply.utf8))) != nil
    }
}
