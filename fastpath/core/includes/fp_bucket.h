/* A token bucket for rate limits on the packet path (ICMPv6 Packet Too Big,
 * control-plane punts): `rate` tokens a second, at most `burst` saved up.
 * The caller owns the state (tokens, last) and keeps it per thread. */
#ifndef FP_BUCKET_H
#define FP_BUCKET_H
#include <time.h>

/* 1 and one token spent, or 0 when the bucket is empty. */
static inline int fp_bucket_take(double *tokens, double *last, double rate, double burst) {
    struct timespec ts;
    double now;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = ts.tv_sec + ts.tv_nsec * 1e-9;
    *tokens += (now - *last) * rate;
    *last = now;
    if (*tokens > burst)
        *tokens = burst;
    if (*tokens < 1.0)
        return 0;
    *tokens -= 1.0;
    return 1;
}
#endif
