import CCompression

/// The decompressed bytes of a gzip stream (RFC 1952), every member of it in turn: `gzip a; gzip b`
/// concatenated is one valid stream, as pigz and some registries write layers.
public final class GzipSource: ByteSource {
    private let upstream: ByteSource
    private let stream: UnsafeMutablePointer<z_stream>
    private let input: UnsafeMutableRawBufferPointer
    private var inputEnded = false
    private var memberEnded = false

    public init(_ upstream: ByteSource) throws(TarError) {
        self.upstream = upstream
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        input = .allocate(byteCount: 128 << 10, alignment: 16)
        if kiln_inflate_init_gzip(stream) != Z_OK {
            stream.deallocate(); input.deallocate()
            throw .compression("gzip: inflateInit failed")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            if stream.pointee.avail_in == 0 && !inputEnded {
                let n = try upstream.read(into: input)
                if n == 0 { inputEnded = true } else {
                    stream.pointee.next_in = input.baseAddress!.assumingMemoryBound(to: Bytef.self)
                    stream.pointee.avail_in = uInt(n)
                }
            }
            if memberEnded {
                // Another member follows only if bytes follow; none is the clean end.
                if stream.pointee.avail_in == 0 { if inputEnded { return 0 } else { continue } }
                if inflateReset(stream) != Z_OK { throw .compression("gzip: inflateReset failed") }
                memberEnded = false
            }
            if stream.pointee.avail_in == 0 && inputEnded {
                throw .compression("gzip stream truncated (it ends before its last member does)")
            }
            stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(min(buffer.count, Int(UInt32.max)))
            let before = Int(stream.pointee.avail_out)
            let rc = inflate(stream, Z_NO_FLUSH)
            let produced = before - Int(stream.pointee.avail_out)
            switch rc {
            case Z_STREAM_END: memberEnded = true
            case Z_OK, Z_BUF_ERROR: break
            case Z_MEM_ERROR: throw .compression("gzip: out of memory")
            default:
                let why = stream.pointee.msg.map { String(cString: $0) } ?? "error \(rc)"
                throw .compression("corrupt gzip data: \(why)")
            }
            if produced > 0 { return produced }
        }
    }
}

/// The decompressed bytes of a zstd stream (RFC 8878), all of its frames.
public final class ZstdSource: ByteSource {
    private let upstream: ByteSource
    private let context: OpaquePointer
    private let input: UnsafeMutableRawBufferPointer
    private var inBuffer = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
    private var inputEnded = false
    /// ZSTD_decompressStream's last hint: 0 once a frame is complete and flushed.
    private var pending = 0

    public init(_ upstream: ByteSource) throws(TarError) {
        self.upstream = upstream
        guard let context = ZSTD_createDCtx() else { throw .compression("zstd: cannot create a context") }
        self.context = context
        input = .allocate(byteCount: Int(ZSTD_DStreamInSize()), alignment: 16)
    }

    deinit {
        ZSTD_freeDCtx(context)
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            if inBuffer.pos == inBuffer.size && !inputEnded {
                let n = try upstream.read(into: input)
                if n == 0 { inputEnded = true } else {
                    inBuffer = ZSTD_inBuffer(src: UnsafeRawPointer(input.baseAddress!), size: n, pos: 0)
                    sawInput = true
                }
            }
            let drained = inBuffer.pos == inBuffer.size && inputEnded
            if drained {
                if !sawInput { throw .compression("zstd stream is empty") }
                if pending == 0 { return 0 }
            }
            var out = ZSTD_outBuffer(dst: buffer.baseAddress!, size: buffer.count, pos: 0)
            let rc = ZSTD_decompressStream(context, &out, &inBuffer)
            if ZSTD_isError(rc) != 0 {
                throw .compression("corrupt zstd data: \(String(cString: ZSTD_getErrorName(rc)))")
            }
            pending = rc
            if out.pos > 0 { return out.pos }
            // No output and no input left while a frame is unfinished: the stream was cut.
            if drained { throw .compression("zstd stream truncated") }
        }
    }

    private var sawInput = false
}

extension LayerCompression {
    /// `source`'s bytes decompressed as this compression says.
    public func decompressing(_ source: ByteSource) throws(TarError) -> ByteSource {
        switch self {
        case .none: return source
        case .gzip: return try GzipSource(source)
        case .zstd: return try ZstdSource(source)
        }
    }
}
