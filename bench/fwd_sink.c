/* fwd_sink: the UDP sink of `python -m bench forward`.
 *
 *   fwd_sink ADDR PORT [MAX_SECONDS] [BATCH]
 *
 * Binds [ADDR]:PORT and counts the datagrams and bytes it receives,
 * BATCH (default 64) per recvmmsg() call. Prints "ready" once bound.
 * SIGUSR1 prints a snapshot line {"t": ..., "packets": ..., "bytes": ...}
 * (t is CLOCK_MONOTONIC seconds); SIGTERM/SIGINT, or MAX_SECONDS (default
 * 600) after the start, end it with one JSON line: packets, bytes, the
 * first and last arrival times, the highest sequence number seen (the
 * generator's first 8 bytes) and the number of recvmmsg() calls.
 * Compiled at run time by bench/forward.py (gcc -O2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define BUF 2048

static volatile sig_atomic_t stop_flag, snap_flag;

static void on_stop(int sig) { (void)sig; stop_flag = 1; }
static void on_snap(int sig) { (void)sig; snap_flag = 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ADDR PORT [MAX_SECONDS] [BATCH]\n", argv[0]);
        return 2;
    }
    double max_s = argc > 3 ? atof(argv[3]) : 600.0;
    int batch = argc > 4 ? atoi(argv[4]) : 64;
    if (batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "fwd_sink: bad batch\n");
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;              /* no SA_RESTART: interrupt recvmmsg */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_snap;
    sigaction(SIGUSR1, &sa, NULL);

    struct sockaddr_in6 me;
    memset(&me, 0, sizeof me);
    me.sin6_family = AF_INET6;
    me.sin6_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET6, argv[1], &me.sin6_addr) != 1) {
        fprintf(stderr, "fwd_sink: bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int rcvbuf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1;
    setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof one);   /* the HoA may come later */
    struct timeval tv = {0, 100000};     /* wake up to check the clock */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }

    uint8_t *bufs = malloc((size_t)batch * BUF);
    struct mmsghdr *msgs = calloc((size_t)batch, sizeof *msgs);
    struct iovec *iov = calloc((size_t)batch, sizeof *iov);
    if (!bufs || !msgs || !iov) { perror("malloc"); return 1; }
    for (int i = 0; i < batch; i++) {
        iov[i].iov_base = bufs + (size_t)i * BUF;
        iov[i].iov_len = BUF;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);

    uint64_t packets = 0, bytes = 0, calls = 0, max_seq = 0;
    double start = now_s(), first = 0, last = 0, t;
    while (!stop_flag) {
        if (snap_flag) {
            snap_flag = 0;
            printf("{\"t\": %.6f, \"packets\": %llu, \"bytes\": %llu}\n", now_s(),
                   (unsigned long long)packets, (unsigned long long)bytes);
            fflush(stdout);
        }
        int r = recvmmsg(fd, msgs, (unsigned)batch, MSG_WAITFORONE, NULL);
        calls++;
        t = now_s();
        if (r > 0) {
            if (!packets)
                first = t;
            last = t;
            packets += (uint64_t)r;
            for (int i = 0; i < r; i++) {
                unsigned len = msgs[i].msg_len;
                bytes += len;
                if (len >= 8) {
                    const uint8_t *p = bufs + (size_t)i * BUF;
                    uint64_t s = ((uint64_t)ntohl(*(const uint32_t *)p) << 32) |
                                 ntohl(*(const uint32_t *)(p + 4));
                    if (s > max_seq)
                        max_seq = s;
                }
            }
        } else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            perror("recvmmsg");
            break;
        }
        if (t - start > max_s)
            break;
    }
    printf("{\"packets\": %llu, \"bytes\": %llu, \"first\": %.6f, \"last\": %.6f, "
           "\"max_seq\": %llu, \"calls\": %llu}\n",
           (unsigned long long)packets, (unsigned long long)bytes, first, last,
           (unsigned long long)max_seq, (unsigned long long)calls);
    fflush(stdout);
    return 0;
}
