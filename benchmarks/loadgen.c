/* Open-loop HTTP/1.1 load generator for benchmarks/proxy.py (wrk2 is not packaged here).
 *
 *   loadgen HOST PORT RATE SECONDS CONNECTIONS WARMUP_SECONDS
 *
 * Request i is *scheduled* at t0 + i / RATE, whatever happened to the earlier ones, and its
 * latency is measured from that scheduled time to the end of its response. A server that stalls
 * therefore gets charged for every request that should have been sent meanwhile (no coordinated
 * omission, as in wrk2). Each keep-alive connection carries one request at a time; when every
 * connection is busy the due requests wait, and the wait counts in their latency.
 *
 * Requests scheduled during the first WARMUP_SECONDS are sent but not recorded. Output: one JSON
 * line. Latencies are kept in a 1-microsecond histogram up to 1 s (the rest in one bucket).
 * Responses must carry Content-Length (nginx, HAProxy and conveyor all do here).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 1000000
#define BUF 8192

struct conn {
    int fd;
    uint64_t due; /* scheduled send time of the request in flight (ns) */
    size_t len;
    char buf[BUF];
};

static uint32_t hist[HIST_US + 1];
static struct sockaddr_in addr;
static char request[256];
static size_t request_len;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int open_conn(int ep, struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Blocking connect on loopback: immediate, and only done at start or after an error. */
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->len = 0;
    return fd;
}

/* 1: a whole response is in the buffer, 0: not yet, -1: something this tool cannot read. */
static int response_complete(struct conn *c, int *status) {
    c->buf[c->len] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->len >= BUF - 1 ? -1 : 0;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (!cl || cl > end) return -1;
    size_t need = (size_t)(end + 4 - c->buf) + (size_t)strtoul(cl + 17, NULL, 10);
    if (c->len < need) return 0;
    return c->len == need ? 1 : -1; /* nothing was pipelined: extra bytes are an error */
}

static uint64_t percentile(uint64_t count, double q) {
    uint64_t rank = (uint64_t)(q * (double)count), seen = 0;
    for (uint64_t us = 0; us <= HIST_US; us++) {
        seen += hist[us];
        if (seen > rank) return us;
    }
    return HIST_US;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS CONNECTIONS WARMUP_SECONDS\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]), warmup = atof(argv[6]);
    int nconn = atoi(argv[5]);
    if (rate <= 0 || seconds <= 0 || nconn <= 0 || warmup < 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    /* Timer wake-ups as precise as the kernel allows (default slack: 50 us). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("inet_pton");
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, port);

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    struct conn **idle = calloc((size_t)nconn, sizeof *idle);
    if (!conns || !idle) die("calloc");
    int nidle = 0;
    for (int i = 0; i < nconn; i++) {
        open_conn(ep, &conns[i]);
        idle[nidle++] = &conns[i];
    }

    uint64_t total = (uint64_t)(rate * (warmup + seconds));
    uint64_t t0 = now_ns() + 1000000; /* 1 ms from now */
    double interval = 1e9 / rate;
    uint64_t record_from = t0 + (uint64_t)(warmup * 1e9);
    uint64_t give_up = t0 + (uint64_t)((warmup + seconds + 10.0) * 1e9);
    uint64_t sent = 0, done = 0, recorded = 0, errors = 0, non2xx = 0, max_us = 0;
    uint64_t max_backlog = 0, armed = 0;
    struct epoll_event evs[64];

    for (;;) {
        uint64_t now = now_ns();
        while (sent < total && nidle > 0) {
            uint64_t due = t0 + (uint64_t)((double)sent * interval);
            if (due > now) break;
            struct conn *c = idle[--nidle];
            c->due = due;
            c->len = 0;
            if (write(c->fd, request, request_len) != (ssize_t)request_len) die("write");
            sent++;
        }
        if (sent < total) {
            uint64_t due = t0 + (uint64_t)((double)sent * interval);
            uint64_t backlog = now > due ? (uint64_t)((double)(now - due) / interval) : 0;
            if (backlog > max_backlog) max_backlog = backlog;
        }
        if (done == total) break;
        if (now > give_up) break;
        /* Wake up for the next due request; re-armed only when that time changes (one syscall
         * less per request at high rates). 0 disarms: nothing due, or no connection free. */
        uint64_t wake = sent < total && nidle > 0 ? t0 + (uint64_t)((double)sent * interval) : 0;
        if (wake != armed) {
            struct itimerspec its = {0};
            its.it_value.tv_sec = (time_t)(wake / 1000000000u);
            its.it_value.tv_nsec = (long)(wake % 1000000000u);
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            armed = wake;
        }
        int n = epoll_wait(ep, evs, 64, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t expirations;
                (void)!read(tfd, &expirations, sizeof expirations);
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, BUF - 1 - c->len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            int status = 0, state = -1;
            if (r > 0) {
                c->len += (size_t)r;
                state = response_complete(c, &status);
                if (state == 0) continue;
            }
            uint64_t end = now_ns();
            done++;
            if (state < 0) {
                /* Closed or unreadable: count it and start over on a new connection. */
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                open_conn(ep, c);
            } else if (status < 200 || status > 299) {
                non2xx++;
            }
            if (c->due >= record_from) {
                uint64_t us = (end - c->due) / 1000;
                if (us > max_us) max_us = us;
                hist[us > HIST_US ? HIST_US : us]++;
                recorded++;
            }
            idle[nidle++] = c;
        }
    }
    printf("{\"rate\": %.1f, \"seconds\": %.3f, \"sent\": %lu, \"completed\": %lu, "
           "\"recorded\": %lu, \"errors\": %lu, \"non2xx\": %lu, \"max_backlog\": %lu, "
           "\"p50_us\": %lu, \"p90_us\": %lu, \"p99_us\": %lu, \"p999_us\": %lu, "
           "\"max_us\": %lu}\n",
           rate, seconds, sent, done, recorded, errors, non2xx, max_backlog,
           percentile(recorded, 0.50), percentile(recorded, 0.90), percentile(recorded, 0.99),
           percentile(recorded, 0.999), max_us);
    return done == total && errors == 0 ? 0 : 1;
}
