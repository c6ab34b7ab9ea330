// zlib and zstd for the Images target's layer decompression. inflateInit2 is a macro over
// inflateInit2_ with the library version, so it gets a real function here.
#ifndef KILN_CCOMPRESSION_H
#define KILN_CCOMPRESSION_H

#include <zlib.h>
#include <zstd.h>

/// inflateInit2 for gzip (and zlib) members: window bits 15 + 32 detects the header.
int kiln_inflate_init_gzip(z_stream *stream);

#endif
