@testable import KilnService
import Testing

@Suite struct PercentDecodingTests {
    @Test func escapesDecodeAndMalformedOnesStay() {
        #expect(HTTPRequest.percentDecode("%41%2f%2F") == "A//")
        #expect(HTTPRequest.percentDecode("a%20b+c") == "a b+c")
        #expect(HTTPRequest.percentDecode("a%20b+c", plusIsSpace: true) == "a b c")
        #expect(HTTPRequest.percentDecode("%") == "%")
        #expect(HTTPRequest.percentDecode("%4") == "%4")
        #expect(HTTPRequest.percentDecode("100%") == "100%")
        #expect(HTTPRequest.percentDecode("%zz%4g") == "%zz%4g")
        #expect(HTTPRequest.percentDecode("%e2%82%ac") == "€")
        // Bytes that are not UTF-8 become replacement characters, never a crash.
        #expect(HTTPRequest.percentDecode("%ff") == "\u{FFFD}")
        #expect(HTTPRequest.percentDecode("") == "")
    }

    @Test func theTargetSplitsIntoPathAndQuery() {
        let (path, query) = HTTPRequest.split("/v2/sand%62oxes?state=running&state=paused&limit=%31&q=a+b&flag&=v&e=")
        #expect(path == "/v2/sandboxes")
        #expect(query == ["state": "running,paused", "limit": "1", "q": "a b", "flag": "", "": "v", "e": ""])
        #expect(HTTPRequest.split("/files?path=%2Fhome%2Fuser%2Fa%26b.txt").1["path"] == "/home/user/a&b.txt")
        #expect(HTTPRequest.split("/only-path").1.isEmpty)
        #expect(HTTPRequest.split("/?").0 == "/")
        #expect(HTTPRequest.split("?&&=&").1 == ["": ""])
    }
}
