/*
 * A backend written in C: opens a handle, scans one relation with prefetch ahead of the reads,
 * verifies every page's PostgreSQL data checksum here in C, and prints its counters.
 *
 * usage: scan LFC SERVER RELNODE PREFETCH_DISTANCE
 * prints "opened" once its handle is open, then waits for a line (or end of file) on stdin
 * before scanning, so that a test can start several backends' scans at one moment; then
 * prints: pages=N verified=N hits=H late_hits=L tcp=T fallbacks=F prefetched=P retries=R
 * avoided=A path_changes=C on_udp=U extension=E
 * exit status: 0 when every page verified, 1 otherwise, 2 on a library error.
 */
#include "udp_prefetch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* pg_checksum_page, as PostgreSQL's checksum_impl.h: 32 parallel FNV-1a-like lanes over the
 * page read as native-endian 32-bit words, pd_checksum counted as zero, two rounds of zeroes,
 * the lanes XORed, the block number mixed in, reduced to 1..65535. */
#define N_SUMS 32
#define FNV_PRIME 16777619u

static const uint32_t checksum_base_offsets[N_SUMS] = {
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
};

static uint32_t checksum_comp(uint32_t sum, uint32_t value)
{
    uint32_t tmp = sum ^ value;
    return tmp * FNV_PRIME ^ (tmp >> 17);
}

static uint16_t pg_checksum_page(const uint8_t *page, uint32_t blkno)
{
    uint32_t sums[N_SUMS];
    memcpy(sums, checksum_base_offsets, sizeof sums);
    for (size_t row = 0; row < UDPF_PAGE_SIZE / (4 * N_SUMS); row++) {
        for (size_t j = 0; j < N_SUMS; j++) {
            uint8_t word[4];
            memcpy(word, page + row * 4 * N_SUMS + j * 4, 4);
            if (row == 0 && j == 2) {
                /* pd_checksum: bytes 8 and 9 of the page. */
                word[0] = 0;
                word[1] = 0;
            }
            uint32_t value;
            memcpy(&value, word, 4);
            sums[j] = checksum_comp(sums[j], value);
        }
    }
    for (int round = 0; round < 2; round++)
        for (size_t j = 0; j < N_SUMS; j++)
            sums[j] = checksum_comp(sums[j], 0);
    uint32_t checksum = 0;
    for (size_t j = 0; j < N_SUMS; j++)
        checksum ^= sums[j];
    checksum ^= blkno;
    return (uint16_t)((checksum % 65535) + 1);
}

/* A page is good when its header is set (pd_upper != 0) and its stored checksum is right. */
static int page_verifies(const uint8_t *page, uint32_t blkno)
{
    uint16_t stored, upper;
    memcpy(&stored, page + 8, 2);
    memcpy(&upper, page + 14, 2);
    return upper != 0 && stored == pg_checksum_page(page, blkno);
}

static int fail(const char *what, UdpfStatus status)
{
    fprintf(stderr, "%s: status %d: %s\n", what, (int)status, udpf_last_error());
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s LFC SERVER RELNODE PREFETCH_DISTANCE\n", argv[0]);
        return 2;
    }
    UdpfOptions opts;
    memset(&opts, 0, sizeof opts);
    opts.lfc_path = argv[1];
    opts.server = argv[2];
    UdpfRelTag rel = {.spcnode = 1663, .dbnode = 5, .relnode = (uint32_t)atoi(argv[3]), .forknum = 0};
    uint32_t distance = (uint32_t)atoi(argv[4]);

    UdpfBackend *backend = NULL;
    UdpfStatus st = udpf_open(&opts, &backend);
    if (st != UDPF_OK)
        return fail("udpf_open", st);
    printf("opened\n");
    fflush(stdout);
    for (int c = getchar(); c != EOF && c != '\n'; c = getchar())
        ;

    bool exists = false;
    uint32_t nblocks = 0;
    if ((st = udpf_exists(backend, &rel, UDPF_LSN_LATEST, &exists)) != UDPF_OK)
        return fail("udpf_exists", st);
    if (!exists) {
        fprintf(stderr, "relation %u does not exist\n", rel.relnode);
        return 2;
    }
    if ((st = udpf_nblocks(backend, &rel, UDPF_LSN_LATEST, &nblocks)) != UDPF_OK)
        return fail("udpf_nblocks", st);

    static uint8_t page[UDPF_PAGE_SIZE];
    uint64_t verified = 0;
    uint32_t prefetched_to = 0;
    for (uint32_t blkno = 0; blkno < nblocks; blkno++) {
        /* Keep the window as far ahead as the library advises (at most `distance`), topped up
         * when a quarter of it has been read. */
        uint32_t ahead = 0;
        if ((st = udpf_prefetch_distance(backend, distance, &ahead)) != UDPF_OK)
            return fail("udpf_prefetch_distance", st);
        if (ahead > 0 && prefetched_to < nblocks && prefetched_to < blkno + ahead / 4 * 3 + 1) {
            uint32_t end = blkno + ahead < nblocks ? blkno + ahead : nblocks;
            uint32_t first = prefetched_to > blkno ? prefetched_to : blkno;
            if ((st = udpf_prefetch(backend, &rel, first, end - first, NULL)) != UDPF_OK)
                return fail("udpf_prefetch", st);
            prefetched_to = end;
        }
        UdpfBufferTag tag = {.rel = rel, .blkno = blkno};
        UdpfSource source;
        if ((st = udpf_read(backend, &tag, UDPF_LSN_LATEST, 0, page, &source)) != UDPF_OK)
            return fail("udpf_read", st);
        if (page_verifies(page, blkno))
            verified++;
        else
            fprintf(stderr, "block %u does not verify (source %d)\n", blkno, (int)source);
    }

    UdpfStats stats;
    if ((st = udpf_stats(backend, &stats)) != UDPF_OK)
        return fail("udpf_stats", st);
    printf("pages=%u verified=%" PRIu64 " hits=%" PRIu64 " late_hits=%" PRIu64 " tcp=%" PRIu64
           " fallbacks=%" PRIu64 " prefetched=%" PRIu64 " retries=%" PRIu64 " avoided=%" PRIu64
           " path_changes=%" PRIu64 " on_udp=%u extension=%u\n",
           nblocks, verified, stats.hits, stats.late_hits, stats.fallbacks + stats.tcp_pipelined,
           stats.fallbacks, stats.prefetched, stats.retries, stats.duplicates_avoided,
           stats.path_changes, (unsigned)stats.on_udp, (unsigned)stats.extension);
    udpf_close(backend);
    return verified == nblocks ? 0 : 1;
}
