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

@Suite struct GuestUserTests {
    static let passwd = Array("""
        root:x:0:0:root:/root:/bin/bash
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
        user:x:1000:1000::/home/user:
        broken:x:notanumber:1::/:/bin/sh
        short:x:5
        nohome:x:1001:100:::/bin/ash

        """.utf8)
    static let group = Array("""
        root:x:0:
        sudo:x:27:user
        docker:x:999:other,user
        user:x:1000:
        users:x:100:nohome,user
        bad:x:

        """.utf8)

    @Test func accountsComeFromPasswdWithTheirGroups() {
        let users = GuestUser.parse(passwd: Self.passwd, group: Self.group)
        #expect(users.map(\.name) == ["root", "daemon", "user", "nohome"])
        let user = users.first { $0.name == "user" }
        #expect(user == GuestUser(name: "user", uid: 1000, gid: 1000, groups: [1000, 27, 999, 100], home: "/home/user", shell: "/bin/sh"))
        #expect(users.first { $0.name == "root" } == GuestUser(name: "root", uid: 0, gid: 0, groups: [0], home: "/root", shell: "/bin/bash"))
        // The primary group is listed once even when /etc/group names the user in it too.
        #expect(users.first { $0.name == "nohome" } == GuestUser(name: "nohome", uid: 1001, gid: 100, groups: [100], home: "/", shell: "/bin/ash"))
    }

    @Test func emptyOrGarbageFilesGiveNoAccounts() {
        #expect(GuestUser.parse(passwd: [], group: []).isEmpty)
        #expect(GuestUser.parse(passwd: [0xff, 0x3a, 0x0a, 0x3a], group: Self.group).isEmpty)
        #expect(GuestUser.parse(passwd: Array("a:x:1:1::/a:/bin/sh".utf8), group: []).first?.groups == [1])
    }
}
