// netio: a TCP client with 64 KiB reads and writes, for the guest-level net benchmark
// (Benchmarks/devices.py --device net): busybox nc moves 1 KiB per system call, and on hosts
// that emulate the guest kernel those calls, not the network path, dominate.
//
//   netio recv HOST PORT        read until the peer closes; print the byte count
//   netio send HOST PORT KIB    write KIB KiB of zeros, shut down the sending side, wait for the
//                               peer to close
//
// Prints one line:  netio: MODE BYTES B in NS ns   (exit status 0), or a message and status 1.
//
// For Benchmarks/net-egress.py (HTTP-shaped, so that Kiln's egress proxy can read a Host header):
//   netio get HOST PORT NAME BYTES      send `GET /down/BYTES` with `Host: NAME`, read until closed
//   netio put HOST PORT NAME KIB        send `PUT /up` with `Host: NAME`, then KIB KiB of zeros,
//                                       shut down the sending side, wait for the peer to close
//       both print  netio: MODE BYTES B in NS ns  (connect to close, the request's bytes not counted)
//   netio conns HOST PORT NAME N        N times: connect, send `GET /c` with `Host: NAME`, read
//                                       until closed; prints
//       netio: conns N connect_ns MEDIAN MIN MAX first_byte_ns MEDIAN MIN MAX total_ns SUM
//       (connect(): until the SYN-ACK, from the proxy when there is one; first byte: until the
//       server's first response byte, i.e. a whole request through whatever is in between)
//   netio flood HOST PORT SECONDS [SIZE]  send SIZE-byte (default 1400, at most 65000) UDP datagrams
//                                       for SECONDS as fast as the guest can; prints
//       netio: flood DATAGRAMS sent BYTES B in NS ns
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char buffer[65536];

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int fail(const char *what) {
    fprintf(stderr, "netio: %s: %s\n", what, strerror(errno));
    return 1;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes `total` bytes of the (zeroed) buffer to `fd`, counting them in `moved`; -1 on error. */
static int send_zeros(int fd, uint64_t total, uint64_t *moved) {
    while (*moved < total) {
        size_t chunk = total - *moved < sizeof buffer ? (size_t)(total - *moved) : sizeof buffer;
        ssize_t n = write(fd, buffer, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        *moved += (uint64_t)n;
    }
    return 0;
}

static int dial(const struct sockaddr_in *address) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)address, sizeof *address) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

// Reads until the peer closes; the byte count, or -1. *first_ns: when the first byte came.
static int64_t drain(int fd, uint64_t *first_ns) {
    int64_t moved = 0;
    for (;;) {
        ssize_t n = read(fd, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return moved;
        if (moved == 0 && first_ns) *first_ns = now_ns();
        moved += n;
    }
}

// get, put, conns, flood (see the top of this file).
static int http_modes(int argc, char **argv, const struct sockaddr_in *address) {
    const char *mode = argv[1];
    char request[512];
    if (strcmp(mode, "flood") == 0) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)address, sizeof *address) != 0) return fail("udp");
        size_t size = argc > 5 ? (size_t)atoi(argv[5]) : 1400;
        if (size < 1 || size > 65000) return 2;
        uint64_t start = now_ns(), end = start + strtoull(argv[4], NULL, 10) * 1000000000ULL, sent = 0, bytes = 0;
        for (uint64_t tries = 1, now = start; now < end; now = (tries++ & 63) ? now : now_ns()) {
            ssize_t n = send(fd, buffer, size, 0);
            if (n > 0) {
                sent++;
                bytes += (uint64_t)n;
            }
        }
        printf("netio: flood %llu sent %llu B in %llu ns\n", (unsigned long long)sent, (unsigned long long)bytes,
               (unsigned long long)(now_ns() - start));
        return 0;
    }
    if (argc != 6) return 2;
    const char *name = argv[4];
    if (strcmp(mode, "conns") == 0) {
        int count = atoi(argv[5]);
        if (count < 1 || count > 10000) return 2;
        uint64_t *connect_ns = calloc((size_t)count, sizeof *connect_ns), *first_ns = calloc((size_t)count, sizeof *first_ns);
        if (!connect_ns || !first_ns) return fail("calloc");
        int length = snprintf(request, sizeof request, "GET /c HTTP/1.0\r\nHost: %s\r\n\r\n", name);
        uint64_t all = now_ns();
        for (int i = 0; i < count; i++) {
            uint64_t start = now_ns(), first = 0;
            int fd = dial(address);
            if (fd < 0) return fail("connect");
            connect_ns[i] = now_ns() - start;
            if (write_all(fd, request, (size_t)length) != 0) return fail("write");
            if (drain(fd, &first) <= 0) return fail("no answer");
            first_ns[i] = first - start;
            close(fd);
        }
        all = now_ns() - all;
        qsort(connect_ns, (size_t)count, sizeof *connect_ns, compare_u64);
        qsort(first_ns, (size_t)count, sizeof *first_ns, compare_u64);
        printf("netio: conns %d connect_ns %llu %llu %llu first_byte_ns %llu %llu %llu total_ns %llu\n", count,
               (unsigned long long)connect_ns[count / 2], (unsigned long long)connect_ns[0],
               (unsigned long long)connect_ns[count - 1], (unsigned long long)first_ns[count / 2],
               (unsigned long long)first_ns[0], (unsigned long long)first_ns[count - 1], (unsigned long long)all);
        return 0;
    }
    int putting = strcmp(mode, "put") == 0;
    if (!putting && strcmp(mode, "get") != 0) return 2;
    uint64_t total = strtoull(argv[5], NULL, 10) * (putting ? 1024 : 1), moved = 0;
    int length = putting ? snprintf(request, sizeof request, "PUT /up HTTP/1.0\r\nHost: %s\r\nContent-Length: %llu\r\n\r\n",
                                    name, (unsigned long long)total)
                         : snprintf(request, sizeof request, "GET /down/%llu HTTP/1.0\r\nHost: %s\r\n\r\n",
                                    (unsigned long long)total, name);
    uint64_t start = now_ns();
    int fd = dial(address);
    if (fd < 0) return fail("connect");
    if (write_all(fd, request, (size_t)length) != 0) return fail("write");
    if (putting) {
        if (send_zeros(fd, total, &moved) != 0) return fail("write");
        shutdown(fd, SHUT_WR);
        if (drain(fd, NULL) < 0) return fail("read");
    } else {
        int64_t n = drain(fd, NULL);
        if (n < 0) return fail("read");
        moved = (uint64_t)n;
    }
    uint64_t elapsed = now_ns() - start;
    close(fd);
    printf("netio: %s %llu B in %llu ns\n", mode, (unsigned long long)moved, (unsigned long long)elapsed);
    return 0;
}

int main(int argc, char **argv) {
    int sending = argc == 5 && strcmp(argv[1], "send") == 0;
    int http = argc >= 5 && (strcmp(argv[1], "get") == 0 || strcmp(argv[1], "put") == 0 ||
                             strcmp(argv[1], "conns") == 0 || strcmp(argv[1], "flood") == 0);
    if (!sending && !http && !(argc == 4 && strcmp(argv[1], "recv") == 0)) {
        fprintf(stderr, "usage: netio recv HOST PORT | netio send HOST PORT KIB | netio get|put|conns HOST PORT NAME N"
                        " | netio flood HOST PORT SECONDS\n");
        return 2;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &address.sin_addr) != 1) {
        fprintf(stderr, "netio: %s is not an IPv4 address\n", argv[2]);
        return 2;
    }
    if (http) {
        int status = http_modes(argc, argv, &address);
        if (status == 2) fprintf(stderr, "netio: bad arguments for %s\n", argv[1]);
        return status;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return fail("socket");
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) return fail("connect");
    uint64_t start = now_ns(), moved = 0;
    if (sending) {
        uint64_t total = strtoull(argv[4], NULL, 10) * 1024;
        if (send_zeros(fd, total, &moved) != 0) return fail("write");
        shutdown(fd, SHUT_WR);
        while (read(fd, buffer, sizeof buffer) > 0) {}
    } else {
        for (;;) {
            ssize_t n = read(fd, buffer, sizeof buffer);
            if (n < 0) {
                if (errno == EINTR) continue;
                return fail("read");
            }
            if (n == 0) break;
            moved += (uint64_t)n;
        }
    }
    uint64_t elapsed = now_ns() - start;
    close(fd);
    printf("netio: %s %llu B in %llu ns\n", argv[1], (unsigned long long)moved, (unsigned long long)elapsed);
    return 0;
}
