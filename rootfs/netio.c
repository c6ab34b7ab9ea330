// netio: a TCP client with 64 KiB reads and writes, for the guest-level net benchmark
// (Benchmarks/devices.py --device net): busybox nc moves 1 KiB per system call, and on hosts
// that emulate the guest kernel those calls, not the network path, dominate.
//
//   netio recv HOST PORT        read until the peer closes; print the byte count
//   netio send HOST PORT KIB    write KIB KiB of zeros, shut down the sending side, wait for the
//                               peer to close
//
// Prints one line:  netio: MODE BYTES B in NS ns   (exit status 0), or a message and status 1.
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

int main(int argc, char **argv) {
    int sending = argc == 5 && strcmp(argv[1], "send") == 0;
    if (!sending && !(argc == 4 && strcmp(argv[1], "recv") == 0)) {
        fprintf(stderr, "usage: netio recv HOST PORT | netio send HOST PORT KIB\n");
        return 2;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &address.sin_addr) != 1) {
        fprintf(stderr, "netio: %s is not an IPv4 address\n", argv[2]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return fail("socket");
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) return fail("connect");
    uint64_t start = now_ns(), moved = 0;
    if (sending) {
        uint64_t total = strtoull(argv[4], NULL, 10) * 1024;
        while (moved < total) {
            size_t chunk = total - moved < sizeof buffer ? (size_t)(total - moved) : sizeof buffer;
            ssize_t n = write(fd, buffer, chunk);
            if (n < 0) {
                if (errno == EINTR) continue;
                return fail("write");
            }
            moved += (uint64_t)n;
        }
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
