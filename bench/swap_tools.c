/* swap_tools: the traffic generator, sink and wire sniffer of
 * `python -m bench swap`. Compiled at run time by bench/swap.py (gcc -O2).
 *
 *   swap_tools gen DST PORT SIZE RATE START
 *       UDP datagrams of SIZE bytes to [DST]:PORT until SIGTERM, numbered
 *       START, START+1, ... (32-bit, network order, at the start of the
 *       payload), sendmmsg() in batches. RATE datagrams/s (paced), 0 = as
 *       fast as the socket takes them. At the end one JSON line:
 *       {"sent", "errors", "elapsed", "start"}; a datagram whose send failed
 *       is counted in errors and its number is not reused.
 *
 *   swap_tools sink ADDR PORT BIN_MS
 *       Receives those datagrams until SIGTERM, recvmmsg() in batches;
 *       counts distinct numbers (a bitmap of 2^28), duplicates, and
 *       datagrams per BIN_MS bin of CLOCK_REALTIME. At the end one JSON
 *       line: {"t0", "bin_ms", "bins", "received", "received_from"[2^26..],
 *       "dups", "datagrams", "out_of_range"}. t0 is the start of bin 0 (s).
 *
 *   swap_tools sniff IFNAME HA A1 A2 B1 B2 SPI BIN_MS
 *       A TPACKET_V2 ring on IFNAME (every frame, both directions) with the
 *       kernel's receive timestamps. Mobile node A's care-of addresses are
 *       A1/A2, mobile node B's B1/B2; SPI is the HA's payload-out SA of A.
 *       Online, in wire order:
 *         - BU: IPv6(A1|A2 -> HA) with next header 60 (HAO): prints
 *           "BU <t_ns> <0|1>"; BA: IPv6(HA -> A1|A2) with next header 43
 *           (RH2): prints "BA <t_ns> <0|1>" (stdout, flushed at once).
 *         - binding: after a BA to Ai, any packet from the HA to the other
 *           CoA of A is *stale*, until a BU from that other CoA is seen
 *           (the move back, after which the HA may switch at any time).
 *         - the ESP sequence numbers of SPI (HA -> A) must go up by one
 *           from packet to packet: breaks and regressions are counted.
 *         - BUs to the HA from B1/B2 and BAs from the HA to B1/B2 are
 *           counted, with first/last timestamps and 10 ms bins of BAs.
 *         - packets from the HA to A per BIN_MS bin.
 *       On SIGTERM: one line "END {json}" with all counters and the
 *       ring's PACKET_STATISTICS (drops must be 0 for a complete record).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) { (void)sig; stop_flag = 1; }

static void setup_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;          /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the benchmark */
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int parse6(const char *text, struct in6_addr *a)
{
    if (inet_pton(AF_INET6, text, a) != 1) {
        fprintf(stderr, "swap_tools: bad IPv6 address %s\n", text);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ gen */

static int gen(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: swap_tools gen DST PORT SIZE RATE START\n");
        return 2;
    }
    struct sockaddr_in6 dst;
    memset(&dst, 0, sizeof dst);
    dst.sin6_family = AF_INET6;
    dst.sin6_port = htons((uint16_t)atoi(argv[3]));
    if (parse6(argv[2], &dst.sin6_addr))
        return 2;
    int size = atoi(argv[4]);
    double rate = atof(argv[5]);
    uint32_t start = (uint32_t)strtoul(argv[6], NULL, 0);
    if (size < 4 || size > 9000) {
        fprintf(stderr, "swap_tools gen: SIZE 4..9000\n");
        return 2;
    }
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("swap_tools gen: socket/connect");
        return 1;
    }
    int sndbuf = 1 << 22;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
    static uint8_t bufs[BATCH][9000];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    memset(bufs, 0, sizeof bufs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    setup_signals();
    uint64_t n = 0, errors = 0;
    double t0 = mono_s();
    while (!stop_flag) {
        int k = BATCH;
        if (rate > 0) {
            double due = (mono_s() - t0) * rate - (double)n;
            if (due < 1) {
                struct timespec ts = {0, 100000};      /* 0.1 ms */
                nanosleep(&ts, NULL);
                continue;
            }
            if (due < k)
                k = (int)due;
        }
        for (int i = 0; i < k; i++) {
            uint32_t v = htonl(start + (uint32_t)(n + i));
            memcpy(bufs[i], &v, 4);
        }
        int r = sendmmsg(fd, msgs, (unsigned)k, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            errors++;                   /* the first one failed: skip its number */
            n++;
            continue;
        }
        n += (uint64_t)r;
    }
    printf("{\"sent\": %llu, \"errors\": %llu, \"elapsed\": %.6f, \"start\": %u}\n",
           (unsigned long long)n, (unsigned long long)errors, mono_s() - t0, start);
    return 0;
}

/* ----------------------------------------------------------------- sink */

#define SINK_BITS (1u << 28)
#define HI_FROM (1u << 26)

struct bins {
    uint32_t *v;
    size_t n, cap;
};

static void bin_add(struct bins *b, size_t i, uint32_t k)
{
    if (i >= b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap <= i)
            cap *= 2;
        uint32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) {
            perror("realloc");
            exit(1);
        }
        memset(v + b->cap, 0, (cap - b->cap) * sizeof *v);
        b->v = v;
        b->cap = cap;
    }
    b->v[i] += k;
    if (i + 1 > b->n)
        b->n = i + 1;
}

static void bins_json(const struct bins *b)
{
    putchar('[');
    for (size_t i = 0; i < b->n; i++)
        printf(i ? ", %u" : "%u", b->v[i]);
    putchar(']');
}

static int sink(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: swap_tools sink ADDR PORT BIN_MS\n");
        return 2;
    }
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons((uint16_t)atoi(argv[3]));
    if (parse6(argv[2], &a.sin6_addr))
        return 2;
    int64_t bin_ns = (int64_t)(atof(argv[4]) * 1e6);
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    int rcvbuf = 1 << 25;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("swap_tools sink: socket/bind");
        return 1;
    }
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t *bitmap = calloc(SINK_BITS / 8, 1);
    static uint8_t bufs[BATCH][64];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    setup_signals();
    int64_t t0 = real_ns();
    struct bins b = {0};
    uint64_t uniq = 0, uniq_hi = 0, dups = 0, dgrams = 0, oor = 0;
    printf("ready\n");
    fflush(stdout);
    while (!stop_flag) {
        int r = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (r <= 0)
            continue;
        int64_t t = real_ns();
        bin_add(&b, (size_t)((t - t0) / bin_ns), (uint32_t)r);
        dgrams += (uint64_t)r;
        for (int i = 0; i < r; i++) {
            if (msgs[i].msg_len < 4) {
                oor++;
                continue;
            }
            uint32_t v;
            memcpy(&v, bufs[i], 4);
            v = ntohl(v);
            if (v >= SINK_BITS) {
                oor++;
                continue;
            }
            uint8_t m = (uint8_t)(1u << (v & 7));
            if (bitmap[v >> 3] & m) {
                dups++;
            } else {
                bitmap[v >> 3] |= m;
                uniq++;
                uniq_hi += v >= HI_FROM;
            }
        }
    }
    printf("{\"t0\": %.9f, \"bin_ms\": %s, \"received\": %llu, \"received_from\": %llu, "
           "\"dups\": %llu, \"datagrams\": %llu, \"out_of_range\": %llu, \"bins\": ",
           t0 * 1e-9, argv[4], (unsigned long long)uniq, (unsigned long long)uniq_hi,
           (unsigned long long)dups, (unsigned long long)dgrams, (unsigned long long)oor);
    bins_json(&b);
    printf("}\n");
    return 0;
}

/* ---------------------------------------------------------------- sniff */

#define MAX_EXAMPLES 10

static int sniff(int argc, char **argv)
{
    if (argc != 10) {
        fprintf(stderr, "usage: swap_tools sniff IFNAME HA A1 A2 B1 B2 SPI BIN_MS\n");
        return 2;
    }
    struct in6_addr ha, coa[4];
    if (parse6(argv[3], &ha))
        return 2;
    for (int i = 0; i < 4; i++)
        if (parse6(argv[4 + i], &coa[i]))
            return 2;
    uint32_t spi_a = (uint32_t)strtoul(argv[8], NULL, 0);
    int64_t bin_ns = (int64_t)(atof(argv[9]) * 1e6);
    unsigned ifindex = if_nametoindex(argv[2]);
    if (!ifindex) {
        perror("swap_tools sniff: if_nametoindex");
        return 1;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) {
        perror("swap_tools sniff: socket");
        return 1;
    }
    int ver = TPACKET_V2;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof ver) < 0) {
        perror("PACKET_VERSION");
        return 1;
    }
    struct tpacket_req req;
    req.tp_block_size = 1 << 22;
    req.tp_block_nr = 16;
    req.tp_frame_size = 256;
    req.tp_frame_nr = (req.tp_block_size / req.tp_frame_size) * req.tp_block_nr;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
        perror("PACKET_RX_RING");
        return 1;
    }
    size_t ring_len = (size_t)req.tp_block_size * req.tp_block_nr;
    uint8_t *ring = mmap(NULL, ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    struct sockaddr_ll ll;
    memset(&ll, 0, sizeof ll);
    ll.sll_family = AF_PACKET;
    ll.sll_protocol = htons(ETH_P_ALL);
    ll.sll_ifindex = (int)ifindex;
    if (bind(fd, (struct sockaddr *)&ll, sizeof ll) < 0) {
        perror("swap_tools sniff: bind");
        return 1;
    }
    setup_signals();

    int64_t t0 = real_ns();
    int binding = -1;                   /* A's CoA after the last BA; -1: in a move */
    uint64_t frames = 0, ipv6 = 0, ba_no = 0;
    uint64_t to_a[2] = {0, 0}, other_to_a = 0, stale = 0, stale_moves = 0;
    uint64_t last_stale_ba = 0;
    int64_t stale_ex[MAX_EXAMPLES][3];  /* BA number, CoA index, seq */
    int n_stale_ex = 0;
    uint64_t esp_n = 0, esp_first = 0, esp_last = 0, breaks = 0, regress = 0;
    int64_t break_ex[MAX_EXAMPLES][2];
    int n_break_ex = 0;
    uint64_t bu_a = 0, ba_a = 0, bu_b = 0, ba_b = 0, ba_b_other = 0;
    int64_t bu_b_first = 0, bu_b_last = 0, ba_b_first = 0, ba_b_last = 0;
    struct bins ha_bins = {0}, bab_bins = {0};
    printf("ready %.9f\n", t0 * 1e-9);
    fflush(stdout);

    unsigned idx = 0;
    while (!stop_flag) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)idx * req.tp_frame_size);
        if (!(h->tp_status & TP_STATUS_USER)) {
            struct pollfd p = {fd, POLLIN, 0};
            poll(&p, 1, 100);
            continue;
        }
        frames++;
        const uint8_t *f = (const uint8_t *)h + h->tp_mac;
        int64_t t = (int64_t)h->tp_sec * 1000000000LL + h->tp_nsec;
        if (h->tp_snaplen >= 14 + 48 && f[12] == 0x86 && f[13] == 0xdd) {
            const uint8_t *ip = f + 14;
            const uint8_t *src = ip + 8, *dst = ip + 24;
            uint8_t nh = ip[6];
            ipv6++;
            if (memcmp(src, &ha, 16) == 0) {
                int c = -1;
                for (int i = 0; i < 4; i++)
                    if (memcmp(dst, &coa[i], 16) == 0)
                        c = i;
                if (c == 0 || c == 1) {
                    if (nh == 43) {                         /* a Binding Ack to A */
                        binding = c;
                        ba_no++;
                        ba_a++;
                        printf("BA %lld %d\n", (long long)t, c);
                        fflush(stdout);
                    } else {
                        if (binding >= 0 && c != binding) {
                            stale++;
                            if (last_stale_ba != ba_no) {
                                stale_moves++;
                                last_stale_ba = ba_no;
                            }
                            if (n_stale_ex < MAX_EXAMPLES) {
                                uint32_t s = 0;
                                if (nh == 50)
                                    memcpy(&s, ip + 44, 4);
                                stale_ex[n_stale_ex][0] = (int64_t)ba_no;
                                stale_ex[n_stale_ex][1] = c;
                                stale_ex[n_stale_ex][2] = ntohl(s);
                                n_stale_ex++;
                            }
                        }
                        if (nh == 50) {
                            uint32_t s_spi, s_seq;
                            memcpy(&s_spi, ip + 40, 4);
                            memcpy(&s_seq, ip + 44, 4);
                            s_spi = ntohl(s_spi);
                            s_seq = ntohl(s_seq);
                            if (s_spi == spi_a) {
                                to_a[c]++;
                                if (esp_n == 0) {
                                    esp_first = s_seq;
                                } else if (s_seq != esp_last + 1) {
                                    breaks++;
                                    if (s_seq <= esp_last)
                                        regress++;
                                    if (n_break_ex < MAX_EXAMPLES) {
                                        break_ex[n_break_ex][0] = (int64_t)esp_last;
                                        break_ex[n_break_ex][1] = s_seq;
                                        n_break_ex++;
                                    }
                                }
                                esp_last = s_seq;
                                esp_n++;
                                bin_add(&ha_bins, (size_t)((t - t0) / bin_ns), 1);
                            } else {
                                other_to_a++;
                            }
                        } else {
                            other_to_a++;
                        }
                    }
                } else if (c == 2 || c == 3) {
                    if (nh == 43) {
                        ba_b++;
                        if (!ba_b_first)
                            ba_b_first = t;
                        ba_b_last = t;
                        bin_add(&bab_bins, (size_t)((t - t0) / 10000000LL), 1);
                    } else {
                        ba_b_other++;
                    }
                }
            } else if (memcmp(dst, &ha, 16) == 0 && nh == 60) {
                for (int i = 0; i < 4; i++) {
                    if (memcmp(src, &coa[i], 16) != 0)
                        continue;
                    if (i < 2) {
                        bu_a++;
                        if (binding >= 0 && i != binding)
                            binding = -1;                    /* moving back */
                        printf("BU %lld %d\n", (long long)t, i);
                        fflush(stdout);
                    } else {
                        bu_b++;
                        if (!bu_b_first)
                            bu_b_first = t;
                        bu_b_last = t;
                    }
                }
            }
        }
        h->tp_status = TP_STATUS_KERNEL;
        __sync_synchronize();
        idx = (idx + 1) % req.tp_frame_nr;
    }
    struct tpacket_stats st;
    socklen_t sl = sizeof st;
    memset(&st, 0, sizeof st);
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
    printf("END {\"t0\": %.9f, \"bin_ms\": %s, \"frames\": %llu, \"ipv6\": %llu, "
           "\"ring_packets\": %u, \"ring_drops\": %u, "
           "\"esp_to_a\": [%llu, %llu], \"other_to_a\": %llu, "
           "\"stale\": %llu, \"moves_with_stale\": %llu, \"stale_examples\": [",
           t0 * 1e-9, argv[9], (unsigned long long)frames, (unsigned long long)ipv6,
           st.tp_packets, st.tp_drops, (unsigned long long)to_a[0], (unsigned long long)to_a[1],
           (unsigned long long)other_to_a, (unsigned long long)stale,
           (unsigned long long)stale_moves);
    for (int i = 0; i < n_stale_ex; i++)
        printf("%s[%lld, %lld, %lld]", i ? ", " : "", (long long)stale_ex[i][0],
               (long long)stale_ex[i][1], (long long)stale_ex[i][2]);
    printf("], \"esp\": {\"packets\": %llu, \"first\": %llu, \"last\": %llu, \"breaks\": %llu, "
           "\"regressions\": %llu, \"break_examples\": [",
           (unsigned long long)esp_n, (unsigned long long)esp_first,
           (unsigned long long)esp_last, (unsigned long long)breaks, (unsigned long long)regress);
    for (int i = 0; i < n_break_ex; i++)
        printf("%s[%lld, %lld]", i ? ", " : "", (long long)break_ex[i][0],
               (long long)break_ex[i][1]);
    printf("]}, \"bu_a\": %llu, \"ba_a\": %llu, \"bu_b\": %llu, \"ba_b\": %llu, "
           "\"ba_b_other\": %llu, \"bu_b_first\": %.9f, \"bu_b_last\": %.9f, "
           "\"ba_b_first\": %.9f, \"ba_b_last\": %.9f, \"ha_to_a_bins\": ",
           (unsigned long long)bu_a, (unsigned long long)ba_a, (unsigned long long)bu_b,
           (unsigned long long)ba_b, (unsigned long long)ba_b_other, bu_b_first * 1e-9,
           bu_b_last * 1e-9, ba_b_first * 1e-9, ba_b_last * 1e-9);
    bins_json(&ha_bins);
    printf(", \"ba_b_bin_ms\": 10, \"ba_b_bins\": ");
    bins_json(&bab_bins);
    printf("}\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "gen") == 0)
        return gen(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "sink") == 0)
        return sink(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "sniff") == 0)
        return sniff(argc, argv);
    fprintf(stderr, "usage: swap_tools gen|sink|sniff ...\n");
    return 2;
}
