import NIOHTTP1
@testable import KilnService
import Testing

/// The service's port routing without a VM: which Host headers name a sandbox port, and how a
/// guest's HTTP response is read (framing, dechunking, malformed answers). End to end, with a
/// server in a real sandbox: Tests/e2b/test_network.py.
@Suite struct PortProxyTests {
    @Test func hostNamesPortAndSandbox() {
        #expect(PortProxy.target(host: "8080-iabc123.e2b.app")! == (8080, "iabc123"))
        #expect(PortProxy.target(host: "3000-iabc123:49999")! == (3000, "iabc123"))
        #expect(PortProxy.target(host: "49983-ixyz.kiln.local")! == (49983, "ixyz"))
        for bad in ["127.0.0.1:8080", "localhost", "api.e2b.app", "0-iabc.e2b.app", "70000-iabc.e2b.app", "80-.x", "80-i/../x.y",
                    "-iabc.x", "８０-iabc.x", ""] {
            #expect(PortProxy.target(host: bad) == nil, "\(bad)")
        }
    }

    func read(_ pieces: [String], method: HTTPMethod = .GET) throws -> (status: Int?, headers: [String: String], body: String, ended: Bool) {
        var r = ResponseReader(method: method)
        var status: Int?, headers: [String: String] = [:], body: [UInt8] = [], ended = false
        for piece in pieces {
            for event in try r.feed(Array(piece.utf8)) {
                switch event {
                case .head(let s, let h): status = s; for (k, v) in h { headers[k.lowercased()] = v }
                case .body(let b): body += b
                case .end: ended = true
                case .switching: Issue.record("a 101 from a reader that was not upgrading")
                }
            }
        }
        return (status, headers, String(decoding: body, as: UTF8.self), ended)
    }

    @Test func lengthChunkedAndToTheEndAreRead() throws {
        let sized = try read(["HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nConnection: keep-alive\r\n\r\nhel", "lo"])
        #expect(sized.status == 200 && sized.body == "hello" && sized.ended)
        #expect(sized.headers["x-a"] == "b" && sized.headers["connection"] == nil && sized.headers["content-length"] == nil)

        // Split anywhere, including inside a chunk size line and its CRLFs.
        let chunked = try read(["HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r", "\nwiki\r\n5;ext=1\r\npe", "dia\r\n0\r\n\r\n"])
        #expect(chunked.status == 201 && chunked.body == "wikipedia" && chunked.ended)

        let open = try read(["HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil ", "the end"])
        #expect(open.body == "until the end" && !open.ended)

        let continued = try read(["HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"])
        #expect(continued.status == 404 && continued.ended)

        let head = try read(["HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"], method: .HEAD)
        #expect(head.body.isEmpty && head.ended)
    }

    /// The answer to an upgrade: a 101 ends the reading with its headers (hop-by-hop ones left
    /// out) and the bytes behind its head, however the head is split; any other answer is read
    /// as usual; a reader that is not upgrading skips a 101 like any 1xx.
    @Test func aSwitchingAnswerEndsTheReadingWithWhatFollowsIt() throws {
        let head = Array("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: k=\r\n\r\n".utf8)
        let frame: [UInt8] = [0x81, 0x02, 0x68, 0x69]
        let whole = head + frame
        for cut in [1, 20, head.count, whole.count - 1] {
            // Fed as it arrives; what follows the event is the tunnel's to read, not the reader's.
            var r = ResponseReader(method: .GET, upgrading: true)
            var events = try r.feed(Array(whole[..<cut])), unread = Array(whole[cut...])
            if events.isEmpty { events = try r.feed(unread); unread = [] }
            guard case .switching(let headers, let rest)? = events.first, events.count == 1 else { Issue.record("\(cut): \(events)"); continue }
            #expect(headers.elementsEqual([("Sec-WebSocket-Accept", "k=")], by: { $0 == $1 }), "\(cut): \(headers)")
            #expect(rest + unread == frame, "\(cut)")
        }
        var refused = ResponseReader(method: .GET, upgrading: true)
        #expect(try refused.feed(Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".utf8))
                == [.head(403, []), .body(Array("no".utf8)), .end])
        #expect(try read(["HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).status == 200)
    }

    @Test func malformedAnswersAreErrors() {
        for bad in ["SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY"] {
            #expect(throws: ResponseReader.Malformed.self, "\(bad.debugDescription)") { _ = try read([bad]) }
        }
        #expect(throws: ResponseReader.Malformed.self) { _ = try read([String(repeating: "x", count: PortProxy.headLimit + 10)]) }
    }
}
