// Guest side of Kiln's vsock integration test (static, no libc beyond syscalls wrappers).
//   vsock-test serve PORT    listen on PORT, accept one connection, read 1 MiB, send 1 MiB, close
//   vsock-test connect PORT  connect to CID 2 PORT, send 1 MiB, read until end of stream, close
// Prints "VSOCK-RECV <sha256> <bytes>" and "VSOCK-SENT <sha256> <bytes>".
#include <linux/vm_sockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOTAL (1 << 20)
#define CHUNK (64 << 10)

struct sha256 { uint32_t h[8]; uint8_t block[64]; uint64_t length; size_t used; };

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(struct sha256 *s, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i-15], 7) ^ rotr(w[i-15], 18) ^ (w[i-15] >> 3);
        uint32_t s1 = rotr(w[i-2], 17) ^ rotr(w[i-2], 19) ^ (w[i-2] >> 10);
        w[i] = w[i-16] + s0 + w[i-7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha_init(struct sha256 *s) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv); s->length = 0; s->used = 0;
}

static void sha_update(struct sha256 *s, const uint8_t *p, size_t n) {
    s->length += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used == 64) { sha_block(s, s->block); s->used = 0; }
    }
}

static void sha_final(struct sha256 *s, char hex[65]) {
    uint64_t bits = s->length * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha_update(s, &pad, 1);
    while (s->used != 56) sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, len, 8);
    for (int i = 0; i < 8; i++) sprintf(hex + 8 * i, "%08x", s->h[i]);
}

static uint8_t buffer[CHUNK];

// Deterministic bytes (xorshift32), different for each mode so the two transfers differ.
static void fill(uint32_t *state, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x = *state; x ^= x << 13; x ^= x >> 17; x ^= x << 5; *state = x;
        p[i] = (uint8_t)x;
    }
}

static int send_all(int fd, uint32_t seed) {
    struct sha256 s; sha_init(&s);
    size_t sent = 0;
    while (sent < TOTAL) {
        size_t n = TOTAL - sent < CHUNK ? TOTAL - sent : CHUNK;
        fill(&seed, buffer, n);
        sha_update(&s, buffer, n);
        for (size_t off = 0; off < n;) {
            ssize_t w = write(fd, buffer + off, n - off);
            if (w <= 0) { perror("vsock-test: write"); return -1; }
            off += (size_t)w;
        }
        sent += n;
    }
    char hex[65]; sha_final(&s, hex);
    printf("VSOCK-SENT %s %zu\n", hex, sent);
    fflush(stdout);
    return 0;
}

// Reads up to `limit` bytes (or to end of stream when limit is 0).
static int receive(int fd, size_t limit) {
    struct sha256 s; sha_init(&s);
    size_t got = 0;
    while (limit == 0 || got < limit) {
        size_t want = limit == 0 || limit - got > CHUNK ? CHUNK : limit - got;
        ssize_t r = read(fd, buffer, want);
        if (r < 0) { perror("vsock-test: read"); return -1; }
        if (r == 0) break;
        sha_update(&s, buffer, (size_t)r);
        got += (size_t)r;
    }
    char hex[65]; sha_final(&s, hex);
    printf("VSOCK-RECV %s %zu\n", hex, got);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: vsock-test serve|connect PORT\n"); return 2; }
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[2]) };
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) { perror("vsock-test: socket"); return 1; }
    if (strcmp(argv[1], "serve") == 0) {
        addr.svm_cid = VMADDR_CID_ANY;
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 1) != 0) { perror("vsock-test: listen"); return 1; }
        printf("VSOCK-LISTENING %s\n", argv[2]);
        fflush(stdout);
        int c = accept(fd, NULL, NULL);
        if (c < 0) { perror("vsock-test: accept"); return 1; }
        if (receive(c, TOTAL) || send_all(c, 0x9e3779b9)) return 1;
        close(c);
    } else {
        addr.svm_cid = VMADDR_CID_HOST;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("vsock-test: connect"); return 1; }
        if (send_all(fd, 0x2545f491) || receive(fd, 0)) return 1;
    }
    close(fd);
    printf("VSOCK-DONE\n");
    return 0;
}
