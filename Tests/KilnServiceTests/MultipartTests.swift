@testable import KilnService
import NIOCore
import Testing

/// The streaming multipart/form-data reader of `POST /files`, fed the body in chosen pieces.
@Suite struct MultipartTests {
    struct Read: Equatable { var name: String?; var filename: String?; var data: [UInt8] }

    func read(_ chunks: Chunks, boundary: String = "XyZzy") async throws -> [Read] {
        let reader = MultipartReader(boundary: boundary) { chunks.next() }
        var out: [Read] = []
        while let part = try await reader.nextPart() {
            var data: [UInt8] = []
            while let d = try await reader.nextData() { data += d }
            out.append(Read(name: part.name, filename: part.filename, data: data))
        }
        return out
    }

    func failure(_ chunks: Chunks, boundary: String = "XyZzy") async -> String? {
        do { _ = try await read(chunks, boundary: boundary); return nil } catch { return "\(error)" }
    }

    static let twoParts = Array((
        "--XyZzy\r\n" +
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n" +
        "Content-Type: application/octet-stream\r\n\r\n" +
        "first line\r\n--XyZ not a boundary\r\n\r\n--\r\n" +
        "\r\n--XyZzy\r\n" +
        "content-disposition: form-data; name=file; filename=\"/tmp/b\"\r\n\r\n" +
        "\r\n" +
        "\r\n--XyZzy--\r\n").utf8)
    static let expected = [
        Read(name: "file", filename: "a.txt", data: Array("first line\r\n--XyZ not a boundary\r\n\r\n--\r\n".utf8)),
        Read(name: "file", filename: "/tmp/b", data: Array("\r\n".utf8)),
    ]

    @Test func partsReadTheSameWhereverTheBodyIsCut() async throws {
        let body = Self.twoParts
        #expect(try await read(Chunks([body])) == Self.expected)
        for cut in 1..<body.count {
            #expect(try await read(Chunks(body, cutAt: [cut])) == Self.expected, "cut at \(cut)")
        }
        #expect(try await read(Chunks(body, every: 1)) == Self.expected)
        #expect(try await read(Chunks(body, every: 7)) == Self.expected)
    }

    @Test func aPreambleAndAPartWithoutHeadersAreAccepted() async throws {
        let body = Array("ignored preamble\r\n--b\r\n\r\nraw\r\n--b--".utf8)
        for cut in 1..<body.count {
            #expect(try await read(Chunks(body, cutAt: [cut]), boundary: "b") == [Read(name: nil, filename: nil, data: Array("raw".utf8))], "cut at \(cut)")
        }
    }

    @Test func largeDataComesInBoundedChunks() async throws {
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let body = Array("--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n".utf8) + payload + Array("\r\n--B--\r\n".utf8)
        let chunks = Chunks(body, every: 10_000)
        let reader = MultipartReader(boundary: "B") { chunks.next() }
        _ = try #require(try await reader.nextPart())
        var data: [UInt8] = []
        while let d = try await reader.nextData() {
            #expect(d.count <= (64 << 10) + 10_000)
            data += d
        }
        #expect(data == payload)
        #expect(try await reader.nextPart() == nil)
    }

    @Test func aMissingClosingBoundaryIsAnError() async {
        let open = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\ndata"
        #expect(await failure(Chunks([Array(open.utf8)]), boundary: "b")?.contains("ended inside a part") == true)
        #expect(await failure(Chunks([Array((open + "\r\n--b").utf8)]), boundary: "b")?.contains("closing boundary") == true)
        #expect(await failure(Chunks([Array("--b\r\nContent-Disposition: form-data".utf8)]), boundary: "b")?.contains("inside part headers") == true)
        #expect(await failure(Chunks([]), boundary: "b")?.contains("closing boundary") == true)
    }

    @Test func aBoundaryFollowedByJunkIsAnError() async {
        // The sender let the delimiter appear inside a part (RFC 2046 5.1.1 forbids it).
        let body = "--b\r\n\r\none\r\n--bX\r\n\r\ntwo\r\n--b--"
        #expect(await failure(Chunks([Array(body.utf8)]), boundary: "b")?.contains("not followed by CRLF") == true)
    }

    @Test func oversizedPartHeadersAreAnError() async {
        let body = "--b\r\nX-Padding: " + String(repeating: "p", count: 20 << 10) + "\r\n\r\ndata\r\n--b--"
        #expect(await failure(Chunks(Array(body.utf8), every: 4096), boundary: "b")?.contains("part headers too long") == true)
        // Bytes without any boundary are refused once past the header limit, not buffered forever.
        let noBoundary = [UInt8](repeating: UInt8(ascii: "x"), count: 40 << 10)
        #expect(await failure(Chunks(noBoundary, every: 1000), boundary: "b")?.contains("no boundary") == true)
    }

    @Test func theBoundaryComesFromTheContentType() {
        #expect(MultipartReader.boundary(of: "multipart/form-data; boundary=abc") == "abc")
        #expect(MultipartReader.boundary(of: "Multipart/Form-Data;charset=utf-8; Boundary=\"a b\"") == "a b")
        #expect(MultipartReader.boundary(of: "multipart/form-data") == nil)
        #expect(MultipartReader.boundary(of: "multipart/form-data; boundary=") == nil)
        #expect(MultipartReader.boundary(of: "multipart/form-data; boundary=" + String(repeating: "a", count: 201)) == nil)
        #expect(MultipartReader.boundary(of: "application/json; boundary=abc") == nil)
    }
}
