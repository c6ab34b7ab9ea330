import Glibc

/// Reads a tar stream entry by entry (POSIX ustar and pax, GNU long names and links, old GNU and
/// v7 headers), never holding more than one entry's metadata in memory. Every field is checked:
/// malformed input is a `TarError`, never a trap. Layout and rules: docs/images.md, "Layers and
/// root disks".
///
///     let reader = TarReader(try LayerCompression.gzip.decompressing(FileByteSource(path: p)))
///     while let entry = try reader.next() {
///         if entry.path == "manifest.json" { let bytes = try reader.readContents(limit: 1 << 20) }
///     }   // unread contents are skipped by next()
public final class TarReader {
    public struct Limits: Sendable {
        /// The largest pax extended header, GNU long name or link, or old GNU sparse map accepted.
        public var maxMetadataSize: Int
        /// Bytes read (and discarded) after the end-of-archive blocks, so that a compressed stream
        /// cut short in its padding is still caught; more than this is an error.
        public var maxTrailingBytes: Int

        public init(maxMetadataSize: Int = 1 << 20, maxTrailingBytes: Int = 1 << 20) {
            self.maxMetadataSize = maxMetadataSize
            self.maxTrailingBytes = maxTrailingBytes
        }
    }

    private let source: ByteSource
    private let limits: Limits
    private let buffer: UnsafeMutableRawBufferPointer
    private var bufferStart = 0
    private var bufferEnd = 0
    private var sourceEnded = false
    /// Bytes of the tar stream consumed so far.
    public private(set) var offset: Int64 = 0
    /// Data bytes of the current entry not yet read, then its padding to a 512-byte block.
    private var remaining: Int64 = 0
    private var padding: Int64 = 0
    private var finished = false
    private var globalRecords: [String: [UInt8]] = [:]
    private var currentPath = ""

    public init(_ source: ByteSource, limits: Limits = Limits()) {
        self.source = source
        self.limits = limits
        buffer = .allocate(byteCount: 64 << 10, alignment: 16)
    }

    deinit { buffer.deallocate() }

    // MARK: Entries

    /// The next entry, skipping what is left of the current one's contents; nil at the end of the
    /// archive (two zero blocks, one zero block and the end of the stream, or the end of the
    /// stream at a block boundary, as Go's archive/tar, which writes most layers, accepts).
    public func next() throws(TarError) -> TarEntry? {
        guard !finished else { return nil }
        try skip(remaining + padding)
        remaining = 0; padding = 0
        var local: [String: [UInt8]] = [:]
        var longName: [UInt8]?
        var longLink: [UInt8]?
        var sawExtension = false
        let start = offset
        var block = [UInt8](repeating: 0, count: 512)
        while true {
            let headerAt = offset
            guard try readBlock(&block) else {
                if sawExtension { throw .truncated(offset: offset) }
                finished = true
                return nil
            }
            if block.allSatisfy({ $0 == 0 }) {
                if sawExtension { throw .badHeader(offset: headerAt, "end of archive after an extended header") }
                finished = true
                try drain()
                return nil
            }
            try verifyChecksum(block, at: headerAt)
            let size = try number(block, 124, 12, "size", at: headerAt)
            guard size >= 0 else { throw .badHeader(offset: headerAt, "negative size") }
            let type = block[156]
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"):
                let data = try readMetadata(size: size, at: headerAt)
                let records = try Self.parsePax(data, at: headerAt)
                if type == UInt8(ascii: "x") { local.merge(records) { $1 } } else { globalRecords.merge(records) { $1 } }
                sawExtension = type == UInt8(ascii: "x") || sawExtension
                // A global header alone is not an entry; it applies to all that follow.
                continue
            case UInt8(ascii: "L"), UInt8(ascii: "K"):
                var data = try readMetadata(size: size, at: headerAt)
                while data.last == 0 { data.removeLast() }
                if type == UInt8(ascii: "L") { longName = data } else { longLink = data }
                sawExtension = true
                continue
            default:
                var entry = try header(block, type: type, size: size, at: headerAt)
                entry.headerOffset = start
                if let longName { entry.pathBytes = longName }
                if let longLink { entry.linkTargetBytes = longLink }
                try apply(globalRecords.merging(local) { $1 }, to: &entry, at: headerAt)
                if type == UInt8(ascii: "S") { try skipSparseExtensions(block) }
                // Links, directories, devices and FIFOs carry no data even if a size is claimed
                // (pax allows a size on hard links); it is skipped, never returned as contents.
                remaining = entry.size
                padding = (512 - entry.size % 512) % 512
                if entry.kind != .regular { try skip(remaining + padding); remaining = 0; padding = 0 }
                currentPath = entry.path
                return entry
            }
        }
    }

    // MARK: The current entry's contents

    /// Reads up to `into.count` bytes of the current entry's contents; 0 at their end.
    public func read(into: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        guard remaining > 0, into.count > 0 else { return 0 }
        let want = Int(min(Int64(into.count), remaining))
        let n = try readRaw(UnsafeMutableRawBufferPointer(rebasing: into[0..<want]))
        if n == 0 { throw .truncated(offset: offset) }
        remaining -= Int64(n)
        return n
    }

    /// The current entry's whole contents, when they fit in `limit` bytes.
    public func readContents(limit: Int) throws(TarError) -> [UInt8] {
        guard remaining <= Int64(limit) else { throw .contentsTooLarge(path: currentPath, size: remaining, limit: limit) }
        var bytes = [UInt8](repeating: 0, count: Int(remaining))
        var filled = 0
        while filled < bytes.count {
            let n = try withBytes(&bytes) { (all) throws(TarError) -> Int in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: all[filled...]))
            }
            filled += n
        }
        return bytes
    }

    /// Writes the rest of the current entry's contents to `fd`; `TarError.io` if a write fails.
    /// Returns the number of bytes written.
    @discardableResult
    public func copyContents(to fd: Int32) throws(TarError) -> Int64 {
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 128 << 10, alignment: 16)
        defer { chunk.deallocate() }
        var total: Int64 = 0
        while true {
            let n = try read(into: chunk)
            if n == 0 { return total }
            var done = 0
            while done < n {
                let w = Glibc.write(fd, chunk.baseAddress! + done, n - done)
                if w < 0 {
                    if errno == EINTR { continue }
                    throw .io(.current("write"))
                }
                done += w
            }
            total += Int64(n)
        }
    }

    /// Skips the rest of the current entry's contents (next() does this too).
    public func skipContents() throws(TarError) {
        try skip(remaining)
        remaining = 0
    }

    // MARK: Headers

    private func header(_ b: [UInt8], type: UInt8, size: Int64, at: Int64) throws(TarError) -> TarEntry {
        let magic = Array(b[257..<263])
        let ustar = magic == Array("ustar\0".utf8)
        let gnu = magic == Array("ustar ".utf8)
        guard ustar || gnu || magic.allSatisfy({ $0 == 0 }) else { throw .badHeader(offset: at, "unknown magic") }
        var path = Self.field(b, 0, 100)
        // POSIX ustar splits long paths into prefix/name; GNU headers keep other fields there.
        if ustar {
            let prefix = Self.field(b, 345, 155)
            if !prefix.isEmpty { path = prefix + [UInt8(ascii: "/")] + path }
        }
        let kind: TarEntry.Kind
        switch type {
        case 0, UInt8(ascii: "0"), UInt8(ascii: "7"), UInt8(ascii: "S"): kind = .regular
        case UInt8(ascii: "1"): kind = .hardLink
        case UInt8(ascii: "2"): kind = .symbolicLink
        case UInt8(ascii: "3"): kind = .characterDevice
        case UInt8(ascii: "4"): kind = .blockDevice
        case UInt8(ascii: "5"): kind = .directory
        case UInt8(ascii: "6"): kind = .fifo
        default: kind = .other(type)
        }
        // v7 archives mark directories only by a trailing slash.
        let isV7Directory = kind == .regular && type != UInt8(ascii: "S") && path.last == UInt8(ascii: "/")
        let mode = try number(b, 100, 8, "mode", at: at)
        let uid = try number(b, 108, 8, "uid", at: at)
        let gid = try number(b, 116, 8, "gid", at: at)
        let mtime = try number(b, 136, 12, "mtime", at: at)
        let hasDevice = ustar || gnu
        let major = try hasDevice ? number(b, 329, 8, "devmajor", at: at) : 0
        let minor = try hasDevice ? number(b, 337, 8, "devminor", at: at) : 0
        guard uid >= 0, gid >= 0, uid <= Int64(Int32.max) * 2 + 1, gid <= Int64(Int32.max) * 2 + 1 else {
            throw .badHeader(offset: at, "uid or gid out of range")
        }
        guard (0...Int64(UInt32.max)).contains(major), (0...Int64(UInt32.max)).contains(minor) else {
            throw .badHeader(offset: at, "device number out of range")
        }
        return TarEntry(
            kind: isV7Directory ? .directory : kind, pathBytes: path, linkTargetBytes: Self.field(b, 157, 100),
            size: size, mode: UInt32(truncatingIfNeeded: mode) & 0o7777, uid: Int(uid), gid: Int(gid),
            userName: hasDevice ? String(decoding: Self.field(b, 265, 32), as: UTF8.self) : "",
            groupName: hasDevice ? String(decoding: Self.field(b, 297, 32), as: UTF8.self) : "",
            modificationTime: mtime, modificationNanoseconds: 0,
            deviceMajor: UInt32(major), deviceMinor: UInt32(minor), xattrs: [:],
            isSparse: type == UInt8(ascii: "S"), headerOffset: at)
    }

    /// Applies pax records (global first, then the entry's own) over the header's fields.
    private func apply(_ records: [String: [UInt8]], to entry: inout TarEntry, at: Int64) throws(TarError) {
        for (key, value) in records {
            // An empty value cancels a global record: the header's own field stands.
            switch key {
            case "path": if !value.isEmpty { entry.pathBytes = value }
            case "linkpath": if !value.isEmpty { entry.linkTargetBytes = value }
            case "size": if !value.isEmpty { entry.size = try Self.decimal(value, key, at: at, range: 0...Int64.max) }
            case "uid": if !value.isEmpty { entry.uid = Int(try Self.decimal(value, key, at: at, range: 0...Int64(UInt32.max))) }
            case "gid": if !value.isEmpty { entry.gid = Int(try Self.decimal(value, key, at: at, range: 0...Int64(UInt32.max))) }
            case "uname": entry.userName = String(decoding: value, as: UTF8.self)
            case "gname": entry.groupName = String(decoding: value, as: UTF8.self)
            case "mtime":
                if !value.isEmpty { (entry.modificationTime, entry.modificationNanoseconds) = try Self.time(value, at: at) }
            default:
                if key.hasPrefix("SCHILY.xattr.") {
                    let name = String(key.dropFirst("SCHILY.xattr.".count))
                    guard !name.isEmpty else { throw .badPaxHeader(offset: at, "empty xattr name") }
                    entry.xattrs[name] = value
                } else if key.hasPrefix("GNU.sparse.") {
                    entry.isSparse = true
                }
            }
        }
        guard !entry.pathBytes.contains(0), !entry.linkTargetBytes.contains(0) else {
            throw .badPaxHeader(offset: at, "NUL byte in a path")
        }
    }

    /// Parses "LENGTH KEY=VALUE\n" records (POSIX pax, "pax Extended Header").
    static func parsePax(_ data: [UInt8], at: Int64) throws(TarError) -> [String: [UInt8]] {
        var records: [String: [UInt8]] = [:]
        var pos = 0
        while pos < data.count {
            if data[pos] == 0 { break }  // some writers pad the header with NULs
            var length = 0
            var digits = 0
            var p = pos
            while p < data.count, data[p] != UInt8(ascii: " ") {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(data[p]), digits < 19 else {
                    throw .badPaxHeader(offset: at, "bad record length")
                }
                length = length * 10 + Int(data[p] - UInt8(ascii: "0"))
                digits += 1; p += 1
            }
            guard digits > 0, p < data.count, length > digits + 1, length <= data.count - pos else {
                throw .badPaxHeader(offset: at, "bad record length")
            }
            let record = data[(p + 1)..<(pos + length)]
            guard record.last == UInt8(ascii: "\n"), let eq = record.firstIndex(of: UInt8(ascii: "=")), eq > record.startIndex else {
                throw .badPaxHeader(offset: at, "record without KEY=VALUE\\n")
            }
            records[String(decoding: record[record.startIndex..<eq], as: UTF8.self)] = Array(record[(eq + 1)..<(record.endIndex - 1)])
            pos += length
        }
        return records
    }

    static func decimal(_ value: [UInt8], _ key: String, at: Int64, range: ClosedRange<Int64>) throws(TarError) -> Int64 {
        var n: Int64 = 0
        guard !value.isEmpty, value.count <= 19 else { throw .badPaxHeader(offset: at, "bad \(key)") }
        for c in value {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { throw .badPaxHeader(offset: at, "bad \(key)") }
            n = n * 10 + Int64(c - UInt8(ascii: "0"))
        }
        guard range.contains(n) else { throw .badPaxHeader(offset: at, "\(key) out of range") }
        return n
    }

    /// A pax time: "-?SECONDS(.FRACTION)?".
    static func time(_ value: [UInt8], at: Int64) throws(TarError) -> (Int64, Int32) {
        var v = value[...]
        let negative = v.first == UInt8(ascii: "-")
        if negative { v = v.dropFirst() }
        let dot = v.firstIndex(of: UInt8(ascii: ".")) ?? v.endIndex
        let seconds = try decimal(Array(v[..<dot]), "mtime", at: at, range: 0...Int64(1) << 40)
        var nanos: Int64 = 0
        if dot < v.endIndex {
            let fraction = Array(v[(dot + 1)...].prefix(9))
            if !fraction.isEmpty {
                guard v[(dot + 1)...].allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
                    throw .badPaxHeader(offset: at, "bad mtime")
                }
                nanos = try decimal(fraction, "mtime", at: at, range: 0...999_999_999)
                for _ in fraction.count..<9 { nanos *= 10 }
            }
        }
        if negative && nanos > 0 { return (-seconds - 1, Int32(1_000_000_000 - nanos)) }
        return (negative ? -seconds : seconds, Int32(nanos))
    }

    /// The bytes of a NUL-terminated (or full-width) header field.
    static func field(_ b: [UInt8], _ start: Int, _ width: Int) -> [UInt8] {
        let slice = b[start..<(start + width)]
        return Array(slice[..<(slice.firstIndex(of: 0) ?? slice.endIndex)])
    }

    /// A numeric header field: octal padded with spaces or NULs, or GNU base-256 (first byte's
    /// high bit set) for values octal cannot hold.
    private func number(_ b: [UInt8], _ start: Int, _ width: Int, _ name: String, at: Int64) throws(TarError) -> Int64 {
        let f = b[start..<(start + width)]
        if f.first! & 0x80 != 0 {
            // Negative base-256 values (0xFF...) only ever encode times before 1970: refused.
            guard f.first! & 0x40 == 0 else { throw .badHeader(offset: at, "negative \(name)") }
            var value = Int64(f.first! & 0x3F)
            for byte in f.dropFirst() {
                guard value < Int64(1) << 55 else { throw .badHeader(offset: at, "\(name) out of range") }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        var value: Int64 = 0
        var i = f.startIndex
        while i < f.endIndex, f[i] == UInt8(ascii: " ") { i += 1 }
        while i < f.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(f[i]) {
            guard value <= Int64.max >> 3 else { throw .badHeader(offset: at, "\(name) out of range") }
            value = value << 3 | Int64(f[i] - UInt8(ascii: "0"))
            i += 1
        }
        guard f[i...].allSatisfy({ $0 == 0 || $0 == UInt8(ascii: " ") }) else {
            throw .badHeader(offset: at, "\(name) is not an octal number")
        }
        return value
    }

    private func verifyChecksum(_ b: [UInt8], at: Int64) throws(TarError) {
        let stored = try number(b, 148, 8, "checksum", at: at)
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for (i, byte) in b.enumerated() {
            let c = (148..<156).contains(i) ? UInt8(ascii: " ") : byte
            unsigned += Int64(c)
            signed += Int64(Int8(bitPattern: c))
        }
        // Some old writers summed signed chars; both sums are accepted, as GNU tar does.
        guard stored == unsigned || stored == signed else { throw .badChecksum(offset: at) }
    }

    /// Old GNU sparse headers continue their map in extension blocks before the data.
    private func skipSparseExtensions(_ header: [UInt8]) throws(TarError) {
        var extended = header[482] != 0
        var block = [UInt8](repeating: 0, count: 512)
        var read = 0
        while extended {
            read += 512
            guard read <= limits.maxMetadataSize else {
                throw .metadataTooLarge(offset: offset, size: Int64(read), limit: limits.maxMetadataSize)
            }
            guard try readBlock(&block) else { throw .truncated(offset: offset) }
            extended = block[504] != 0
        }
    }

    /// Reads the stream to its end (decompressors check their trailers only there).
    private func drain() throws(TarError) {
        let start = offset
        bufferStart = bufferEnd
        while !sourceEnded {
            try fill()
            offset += Int64(bufferEnd)
            bufferStart = bufferEnd
            guard offset - start <= Int64(limits.maxTrailingBytes) else {
                throw .badHeader(offset: start, "more than \(limits.maxTrailingBytes) bytes after the end of the archive")
            }
        }
    }

    private func readMetadata(size: Int64, at: Int64) throws(TarError) -> [UInt8] {
        guard size <= Int64(limits.maxMetadataSize) else {
            throw .metadataTooLarge(offset: at, size: size, limit: limits.maxMetadataSize)
        }
        var data = [UInt8](repeating: 0, count: Int(size))
        try withBytes(&data) { (b) throws(TarError) in try readExact(b) }
        try skip((512 - size % 512) % 512)
        return data
    }

    // MARK: The byte stream

    /// One 512-byte block; false at the end of the stream exactly on a block boundary.
    private func readBlock(_ block: inout [UInt8]) throws(TarError) -> Bool {
        let first = try withBytes(&block) { (b) throws(TarError) -> Int in try readRaw(b) }
        if first == 0 { return false }
        if first < 512 {
            try withBytes(&block) { (b) throws(TarError) in
                try readExact(UnsafeMutableRawBufferPointer(rebasing: b[first...]))
            }
        }
        return true
    }

    private func readExact(_ into: UnsafeMutableRawBufferPointer) throws(TarError) {
        var done = 0
        while done < into.count {
            let n = try readRaw(UnsafeMutableRawBufferPointer(rebasing: into[done...]))
            if n == 0 { throw .truncated(offset: offset) }
            done += n
        }
    }

    private func skip(_ count: Int64) throws(TarError) {
        var left = count
        while left > 0 {
            if bufferStart == bufferEnd { try fill() }
            if bufferStart == bufferEnd { throw .truncated(offset: offset) }
            let n = Int(min(Int64(bufferEnd - bufferStart), left))
            bufferStart += n; offset += Int64(n); left -= Int64(n)
        }
    }

    /// Up to `into.count` bytes of the stream, from the buffer or, for large reads with the
    /// buffer empty, straight from the source; 0 at its end.
    private func readRaw(_ into: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        guard into.count > 0 else { return 0 }
        if bufferStart == bufferEnd {
            if into.count >= buffer.count && !sourceEnded {
                let n = try source.read(into: into)
                if n == 0 { sourceEnded = true }
                offset += Int64(n)
                return n
            }
            try fill()
            if bufferStart == bufferEnd { return 0 }
        }
        let n = min(into.count, bufferEnd - bufferStart)
        into.baseAddress!.copyMemory(from: buffer.baseAddress! + bufferStart, byteCount: n)
        bufferStart += n; offset += Int64(n)
        return n
    }

    private func fill() throws(TarError) {
        guard !sourceEnded else { return }
        let n = try source.read(into: buffer)
        if n == 0 { sourceEnded = true }
        bufferStart = 0; bufferEnd = n
    }
}

/// `withUnsafeMutableBytes` keeping the body's typed error (the standard one rethrows `any Error`).
func withBytes<R>(_ array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(TarError) -> R) throws(TarError) -> R {
    let result = array.withUnsafeMutableBytes { b in Result { () throws(TarError) -> R in try body(b) } }
    return try result.get()
}
