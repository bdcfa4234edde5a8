/* fwd_gen: the UDP traffic generator of `python -m bench forward`.
 *
 *   fwd_gen DST PORT PAYLOAD RATE SECONDS [BATCH]
 *
 * Sends UDP datagrams of PAYLOAD bytes to [DST]:PORT for SECONDS seconds,
 * BATCH (default 64) per sendmmsg() call. RATE > 0: paced at RATE datagrams/s
 * (each call sends what is due, then sleeps until the next datagram is due);
 * RATE = 0: saturation, as fast as the socket takes them. Each datagram
 * starts with its sequence number (64-bit, network order; 32-bit when the
 * payload is shorter than 8 bytes).
 *
 * It prints "ready" once its signal handlers are in place and it starts
 * sending. SIGUSR1 prints a snapshot line {"t": ..., "sent": ...} (t is
 * CLOCK_MONOTONIC seconds); SIGTERM/SIGINT stop early. At the end it prints
 * {"sent", "bytes", "elapsed", "calls", "errors", "rate"} as one JSON line.
 * Compiled at run time by bench/forward.py (gcc -O2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024

static volatile sig_atomic_t stop_flag, snap_flag;

static void on_stop(int sig) { (void)sig; stop_flag = 1; }
static void on_snap(int sig) { (void)sig; snap_flag = 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_until(double t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);   /* EINTR: just return */
}

static void put_seq(uint8_t *p, size_t payload, uint64_t seq)
{
    if (payload >= 8) {
        uint32_t hi = htonl((uint32_t)(seq >> 32)), lo = htonl((uint32_t)seq);
        memcpy(p, &hi, 4);
        memcpy(p + 4, &lo, 4);
    } else if (payload >= 4) {
        uint32_t lo = htonl((uint32_t)seq);
        memcpy(p, &lo, 4);
    }
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s DST PORT PAYLOAD RATE SECONDS [BATCH]\n", argv[0]);
        return 2;
    }
    const char *dst = argv[1];
    int port = atoi(argv[2]);
    long payload = atol(argv[3]);
    double rate = atof(argv[4]);
    double seconds = atof(argv[5]);
    int batch = argc > 6 ? atoi(argv[6]) : 64;
    if (payload < 1 || payload > 65000 || batch < 1 || batch > MAX_BATCH || seconds <= 0 || rate < 0) {
        fprintf(stderr, "fwd_gen: bad arguments\n");
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;              /* no SA_RESTART: wake sleeps and sends */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_snap;
    sigaction(SIGUSR1, &sa, NULL);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);   /* pace to the microsecond, not 50 us */

    struct sockaddr_in6 to;
    memset(&to, 0, sizeof to);
    to.sin6_family = AF_INET6;
    to.sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, dst, &to.sin6_addr) != 1) {
        fprintf(stderr, "fwd_gen: bad address %s\n", dst);
        return 2;
    }
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int sndbuf = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }

    uint8_t *bufs = calloc((size_t)batch, (size_t)payload);
    struct mmsghdr *msgs = calloc((size_t)batch, sizeof *msgs);
    struct iovec *iov = calloc((size_t)batch, sizeof *iov);
    if (!bufs || !msgs || !iov) { perror("calloc"); return 1; }
    for (int i = 0; i < batch; i++) {
        for (long k = 8; k < payload; k++)
            bufs[(size_t)i * payload + k] = (uint8_t)k;
        iov[i].iov_base = bufs + (size_t)i * payload;
        iov[i].iov_len = (size_t)payload;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    printf("ready\n");
    fflush(stdout);
    uint64_t sent = 0, calls = 0, errors = 0;
    double t0 = now_s(), end = t0 + seconds, t = t0;
    while (!stop_flag && (t = now_s()) < end) {
        if (snap_flag) {
            snap_flag = 0;
            printf("{\"t\": %.6f, \"sent\": %llu}\n", t, (unsigned long long)sent);
            fflush(stdout);
        }
        long n = batch;
        if (rate > 0) {
            double due = (t - t0) * rate + 1.0 - (double)sent;
            if (due < 1.0) {                     /* next datagram due at t0 + sent / rate */
                double next = t0 + (double)sent / rate;
                sleep_until(next < end ? next : end);
                continue;
            }
            if (due < n)
                n = (long)due;
        }
        for (long i = 0; i < n; i++)
            put_seq(bufs + (size_t)i * payload, (size_t)payload, sent + (uint64_t)i);
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        calls++;
        if (r < 0) {
            if (errno != EINTR)
                errors++;
            if (errno == ENOBUFS || errno == EAGAIN)
                sched_yield();
            continue;
        }
        sent += (uint64_t)r;
    }
    double elapsed = now_s() - t0;
    printf("{\"sent\": %llu, \"bytes\": %llu, \"elapsed\": %.6f, \"calls\": %llu, \"errors\": %llu, "
           "\"rate\": %.1f, \"payload\": %ld, \"batch\": %d}\n",
           (unsigned long long)sent, (unsigned long long)(sent * (uint64_t)payload), elapsed,
           (unsigned long long)calls, (unsigned long long)errors, rate, payload, batch);
    fflush(stdout);
    return 0;
}
