// randread: random-offset 4 KiB direct reads from a block device, one at a time (queue depth 1),
// for the guest-level block benchmark (Benchmarks/devices.py): the guest has no fio.
//
//   randread DEVICE COUNT [SEED]
//
// Opens DEVICE with O_DIRECT, reads COUNT blocks of 4096 bytes at offsets drawn uniformly from the
// device's 4 KiB-aligned blocks (xorshift64*, SEED default 1, so every VMM reads the same blocks),
// and prints one line:  randread: COUNT reads of 4096 B in NS ns (RATE reads/s), BLOCKS blocks
// Exit status 0, or 1 with a message on stderr if a read fails or comes back short.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t state;

static uint64_t next_random(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: randread DEVICE COUNT [SEED]\n");
        return 2;
    }
    long count = strtol(argv[2], NULL, 10);
    state = argc == 4 ? strtoull(argv[3], NULL, 10) : 1;
    if (count <= 0 || state == 0) {
        fprintf(stderr, "randread: COUNT must be positive and SEED non-zero\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("randread: open");
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
        off_t end = lseek(fd, 0, SEEK_END);
        size = end > 0 ? (uint64_t)end : 0;
    }
    uint64_t blocks = size / 4096;
    if (blocks == 0) {
        fprintf(stderr, "randread: %s is smaller than 4 KiB\n", argv[1]);
        return 1;
    }
    void *buffer;
    if (posix_memalign(&buffer, 4096, 4096) != 0) {
        fprintf(stderr, "randread: out of memory\n");
        return 1;
    }
    uint64_t start = now_ns();
    for (long i = 0; i < count; i++) {
        off_t offset = (off_t)(next_random() % blocks) * 4096;
        ssize_t n = pread(fd, buffer, 4096, offset);
        if (n != 4096) {
            fprintf(stderr, "randread: read %ld at %lld: %s\n", i, (long long)offset, n < 0 ? strerror(errno) : "short");
            return 1;
        }
    }
    uint64_t elapsed = now_ns() - start;
    printf("randread: %ld reads of 4096 B in %llu ns (%.1f reads/s), %llu blocks\n", count,
           (unsigned long long)elapsed, elapsed ? count * 1e9 / (double)elapsed : 0.0, (unsigned long long)blocks);
    return 0;
}
