/* fwd_null HOME_IF WIRE_IF: the reference a C null forwarder sets for
 * `python -m bench forward --peers` (issue 3 quotes one: ~3.5 us of CPU per
 * packet at 20k pps). Two TUN devices, every packet read from one is written
 * unchanged to the other: poll() both, then read() until EAGAIN (at most 64
 * per side and turn, like fastpath's --batch) and write() each packet.
 * No transform, no offloads, no threads. Prints "ready" once both TUNs exist;
 * SIGTERM/SIGINT end it with the counts on stdout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define BATCH 64

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int tun_open(const char *name)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        perror("/dev/net/tun");
        exit(2);
    }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        fprintf(stderr, "TUNSETIFF %s: %s\n", name, strerror(errno));
        exit(2);
    }
    return fd;
}

/* Move up to BATCH packets from `in` to `out`; counts what was written. */
static void pump(int in, int out, unsigned long *pkts, unsigned long *errs)
{
    static unsigned char buf[65536];
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n <= 0)
            return;                 /* EAGAIN (or an error): the queue is empty */
        if (write(out, buf, (size_t)n) == n)
            (*pkts)++;
        else
            (*errs)++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOME_IF WIRE_IF\n", argv[0]);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;      /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct pollfd fds[2] = {
        {.fd = tun_open(argv[1]), .events = POLLIN},
        {.fd = tun_open(argv[2]), .events = POLLIN},
    };
    unsigned long to_wire = 0, to_home = 0, errs = 0;
    printf("ready\n");
    fflush(stdout);
    while (!stop) {
        if (poll(fds, 2, 1000) <= 0)
            continue;
        if (fds[0].revents & POLLIN)
            pump(fds[0].fd, fds[1].fd, &to_wire, &errs);
        if (fds[1].revents & POLLIN)
            pump(fds[1].fd, fds[0].fd, &to_home, &errs);
    }
    printf("{\"to_wire\": %lu, \"to_home\": %lu, \"write_errors\": %lu}\n", to_wire, to_home, errs);
    return 0;
}
