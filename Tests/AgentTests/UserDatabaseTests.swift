@testable import Agent
import Glibc
import Testing

/// The guest's /etc/passwd and /etc/group as the agent reads them for user lookups (envd's
/// `username`, the SDK's `user`).
@Suite struct UserDatabaseTests {
    static let passwd = """
        # a comment line
        root:x:0:0:root:/root:/bin/bash
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
        user:x:1000:1000::/home/user:
        broken:x:notanumber:1::/:/bin/sh
        short:x:5
        nohome:x:1001:100:::/bin/ash
        1002:x:1003:1003::/home/digits:/bin/sh

        """
    static let group = """
        root:x:0:
        sudo:x:27:user
        docker:x:999:other,user
        user:x:1000:
        users:x:100:nohome,user
        bad:x:

        """

    func database(passwd: String = passwd, group: String = group) -> UserDatabase {
        let dir = "/tmp/kiln-userdb-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/passwd"); unlink(dir + "/group"); rmdir(dir) }
        for (name, text) in [("passwd", passwd), ("group", group)] {
            let fd = open(dir + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        return UserDatabase.load(passwd: dir + "/passwd", group: dir + "/group")
    }

    @Test func accountsComeFromPasswdWithTheirGroups() throws {
        let db = database()
        #expect(db.users.map(\.name) == ["root", "daemon", "user", "nohome", "1002"])
        let user = try #require(db.lookup("user"))
        #expect(user.uid == 1000 && user.gid == 1000 && user.home == "/home/user" && user.shell == "")
        #expect(user.groups == [1000, 27, 999, 100])
        // The primary group is listed once even when /etc/group names the user in it too.
        #expect(db.lookup("nohome")?.groups == [100])
        #expect(db.lookup("root")?.groups == [0])
        #expect(db.userName(27) == "" && db.groupName(27) == "sudo" && db.userName(1001) == "nohome")
    }

    @Test func lookupsByNumberPreferNames() {
        let db = database()
        #expect(db.lookup("0")?.name == "root")
        #expect(db.lookup("1003")?.name == "1002")
        // A user named with digits is found by its name first.
        #expect(db.lookup("1002")?.uid == 1003)
        #expect(db.lookup("nobody") == nil)
        #expect(db.lookup("") == nil)
    }

    @Test func emptyMissingOrGarbageFilesGiveNoAccounts() {
        #expect(database(passwd: "", group: "").users.isEmpty)
        #expect(database(passwd: "\u{FFFD}:\n:", group: "").users.isEmpty)
        #expect(UserDatabase.load(passwd: "/nonexistent/passwd", group: "/nonexistent/group").users.isEmpty)
        #expect(database(passwd: "a:x:1:1::/a:/bin/sh", group: "").lookup("a")?.groups == [1])
    }
}
