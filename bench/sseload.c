/*
 * sseload: an SSE-aware HTTP/1.1 load client for bench/run.py.
 *
 * One thread, one epoll loop, non-blocking sockets, so that it costs far less
 * CPU per stream than any gateway it measures (run.py checks this by loading
 * the fake upstream directly: that figure is the harness ceiling).
 *
 * Two modes:
 *   closed loop  (-d SECONDS): -c connections, each sends a request, reads the
 *                whole response, and sends the next one on the same keep-alive
 *                connection until the deadline. Gives streams/s.
 *   one shot     (-n COUNT):   COUNT connections, each sends one request and
 *                reads one response; at most -C connects are in flight at once
 *                (a client herd, not a SYN flood). Waits for all to finish or
 *                for -t seconds. Gives how many completed.
 *
 * For every response it records: time to first byte (TTFB, from the start of
 * the request -- including connect() in one-shot mode -- to the first
 * "data:" line of the body) and whole-stream time (to the end of the body).
 * A stream is "ok" when the status is 200, the body ended cleanly (chunked
 * terminator, Content-Length reached, or close with neither), at least -e
 * "data:" lines arrived and one of them was "data: [DONE]" (unless -E 0, for
 * plain JSON responses).
 *
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 65536
#define LINE_KEEP 16

enum cstate { C_IDLE, C_CONNECTING, C_SENDING, C_HEADERS, C_BODY, C_DONE };
enum body_mode { B_CLOSE, B_LENGTH, B_CHUNKED };
enum chunk_state { K_SIZE, K_SIZE_EXT, K_SIZE_LF, K_DATA, K_DATA_CR, K_DATA_LF, K_TRAILER, K_END };

struct conn {
    int fd;
    enum cstate state;
    double t_start;   /* request start (connect start in one-shot mode) */
    double t_first;   /* first "data:" line, 0 if none yet */
    size_t sent;
    /* response headers */
    char hbuf[8192];
    size_t hlen;
    int status;
    int keep_alive;
    enum body_mode mode;
    long long remaining;  /* B_LENGTH: bytes left; B_CHUNKED: bytes left in chunk */
    enum chunk_state ks;
    int trailer_empty_line;
    /* SSE line scanner */
    char line[LINE_KEEP];
    int line_len;
    int data_lines;
    int saw_done;
    int ended;  /* body framing ended cleanly */
    int requests_on_conn;
};

static struct {
    struct sockaddr_in addr;
    char *request;
    size_t request_len;
    int concurrency;
    double duration;
    long count;
    int max_connecting;
    double timeout;
    int expect_events;
    int expect_done;
    int keepalive;
    double rate; /* one-shot: new connections per second (0: as fast as -C allows) */
} cfg;

static struct {
    long ok, bad_status, incomplete, connect_errors, timeouts, started;
    double *ttfb, *total;
    size_t n, cap;
    long status_hist[6];
} st;

static int epfd;
static int connecting_now;
static long launched;  /* one-shot: connections started */
static long active_now, peak_active; /* streams between connect start and end */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *msg) {
    perror(msg);
    exit(2);
}

static void record(double ttfb, double total) {
    if (st.n == st.cap) {
        st.cap = st.cap ? st.cap * 2 : 4096;
        st.ttfb = realloc(st.ttfb, st.cap * sizeof(double));
        st.total = realloc(st.total, st.cap * sizeof(double));
        if (!st.ttfb || !st.total) die("realloc");
    }
    st.ttfb[st.n] = ttfb;
    st.total[st.n] = total;
    st.n++;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double p) {
    if (n == 0) return -1;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return v[i];
}

static void conn_reset_response(struct conn *c) {
    c->t_first = 0;
    c->sent = 0;
    c->hlen = 0;
    c->status = 0;
    c->keep_alive = 1;
    c->mode = B_CLOSE;
    c->remaining = 0;
    c->ks = K_SIZE;
    c->trailer_empty_line = 0;
    c->line_len = 0;
    c->data_lines = 0;
    c->saw_done = 0;
    c->ended = 0;
}

static int open_conn(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        st.connect_errors++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = C_CONNECTING;
    c->requests_on_conn = 0;
    connecting_now++;
    if (++active_now > peak_active) peak_active = active_now;
    if (connect(fd, (struct sockaddr *)&cfg.addr, sizeof cfg.addr) < 0 && errno != EINPROGRESS) {
        st.connect_errors++;
        close(fd);
        c->fd = -1;
        c->state = C_IDLE;
        connecting_now--;
        active_now--;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    return 0;
}

static void close_conn(struct conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        active_now--;
    }
    if (c->state == C_CONNECTING) connecting_now--;
    c->fd = -1;
    c->state = C_IDLE;
}

static void set_events(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
}

/* Feed decoded body bytes to the SSE line scanner. */
static void scan_body(struct conn *c, const char *p, size_t n, double t) {
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n' || ch == '\r') {
            if (c->line_len > 0) {
                if (c->line_len >= 5 && memcmp(c->line, "data:", 5) == 0) {
                    c->data_lines++;
                    if (c->line_len >= 12 && memcmp(c->line, "data: [DONE]", 12) == 0) c->saw_done = 1;
                }
            }
            c->line_len = 0;
            continue;
        }
        if (c->line_len < LINE_KEEP) c->line[c->line_len] = ch;
        c->line_len++;
        if (c->line_len == 5 && c->t_first == 0 && memcmp(c->line, "data:", 5) == 0) c->t_first = t;
    }
}

/* Returns 1 when the response body has ended. */
static int feed_body(struct conn *c, const char *p, size_t n, double t) {
    if (c->mode == B_CLOSE) {
        scan_body(c, p, n, t);
        return 0;
    }
    if (c->mode == B_LENGTH) {
        size_t take = (long long)n < c->remaining ? n : (size_t)c->remaining;
        scan_body(c, p, take, t);
        c->remaining -= (long long)take;
        if (c->remaining == 0) {
            c->ended = 1;
            return 1;
        }
        return 0;
    }
    /* chunked */
    size_t i = 0;
    while (i < n) {
        char ch = p[i];
        switch (c->ks) {
        case K_SIZE:
            if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')) {
                int d = ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
                c->remaining = c->remaining * 16 + d;
            } else if (ch == '\r') {
                c->ks = K_SIZE_LF;
            } else if (ch == '\n') {
                goto size_done;
            } else {
                c->ks = K_SIZE_EXT;
            }
            i++;
            break;
        case K_SIZE_EXT:
            if (ch == '\n') {
                i++;
                goto size_done;
            }
            if (ch == '\r') c->ks = K_SIZE_LF;
            i++;
            break;
        case K_SIZE_LF:
            i++;
        size_done:
            if (c->remaining == 0) {
                c->ks = K_TRAILER;
                c->trailer_empty_line = 1;
            } else {
                c->ks = K_DATA;
            }
            break;
        case K_DATA: {
            size_t avail = n - i;
            size_t take = (long long)avail < c->remaining ? avail : (size_t)c->remaining;
            scan_body(c, p + i, take, t);
            c->remaining -= (long long)take;
            i += take;
            if (c->remaining == 0) c->ks = K_DATA_CR;
            break;
        }
        case K_DATA_CR:
            c->ks = ch == '\r' ? K_DATA_LF : K_SIZE;
            if (ch == '\n') c->ks = K_SIZE;
            c->remaining = 0;
            i++;
            break;
        case K_DATA_LF:
            c->ks = K_SIZE;
            c->remaining = 0;
            i++;
            break;
        case K_TRAILER:
            /* trailer lines end with an empty line */
            if (ch == '\n') {
                if (c->trailer_empty_line) {
                    c->ks = K_END;
                    c->ended = 1;
                    return 1;
                }
                c->trailer_empty_line = 1;
            } else if (ch != '\r') {
                c->trailer_empty_line = 0;
            }
            i++;
            break;
        case K_END:
            return 1;
        }
    }
    return 0;
}

static int header_has(const char *h, size_t hlen, const char *name, const char *value) {
    /* case-insensitive search for "name:" at a line start whose value contains value */
    size_t nl = strlen(name);
    const char *end = h + hlen;
    const char *line = h;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            if (!value) return 1;
            size_t vl = strlen(value);
            for (const char *q = line + nl + 1; q + vl <= eol; q++)
                if (strncasecmp(q, value, vl) == 0) return 1;
        }
        line = eol + 1;
    }
    return 0;
}

static long long header_int(const char *h, size_t hlen, const char *name) {
    size_t nl = strlen(name);
    const char *end = h + hlen;
    const char *line = h;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':')
            return strtoll(line + nl + 1, NULL, 10);
        line = eol + 1;
    }
    return -1;
}

static void start_request(struct conn *c, double t, int keep_start) {
    conn_reset_response(c);
    if (!keep_start) c->t_start = t;
    c->state = C_SENDING;
    c->requests_on_conn++;
    st.started++;
    set_events(c, EPOLLOUT);
}

static int one_shot(void) { return cfg.count > 0; }

static long n_done; /* connections that reached C_DONE */

static void mark_done(struct conn *c) {
    if (c->state != C_DONE) n_done++;
    c->state = C_DONE;
}

/* A response finished (well or not): account for it and decide what next. */
static void finish_response(struct conn *c, double t, int clean, double deadline) {
    int ok = clean && c->status == 200 && c->ended &&
             c->data_lines >= cfg.expect_events && (!cfg.expect_done || c->saw_done);
    if (c->status >= 100 && c->status < 600) st.status_hist[c->status / 100]++;
    if (ok) {
        st.ok++;
        double ttfb = c->t_first > 0 ? c->t_first - c->t_start : t - c->t_start;
        record(ttfb, t - c->t_start);
    } else if (c->status != 0 && c->status != 200) {
        st.bad_status++;
    } else {
        st.incomplete++;
    }
    int reuse = clean && c->ended && c->keep_alive && cfg.keepalive;
    if (one_shot() || t >= deadline) {
        close_conn(c);
        mark_done(c);
        return;
    }
    if (reuse) {
        start_request(c, t, 0);
    } else {
        close_conn(c);
        conn_reset_response(c);
        c->t_start = t;
        if (open_conn(c) < 0) mark_done(c);
    }
}

static void on_event(struct conn *c, uint32_t events, double deadline) {
    double t = now();
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        connecting_now--;
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            st.connect_errors++;
            if (c->fd >= 0) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                active_now--;
            }
            c->fd = -1;
            mark_done(c);
            return;
        }
        /* one-shot: keep the connect start as the request start */
        /* a fresh connection keeps its connect start as the request start */
        start_request(c, t, 1);
    }
    if (c->state == C_SENDING) {
        while (c->sent < cfg.request_len) {
            ssize_t w = send(c->fd, cfg.request + c->sent, cfg.request_len - c->sent, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN) return;
                finish_response(c, t, 0, deadline);
                return;
            }
            c->sent += (size_t)w;
        }
        c->state = C_HEADERS;
        set_events(c, EPOLLIN);
        return;
    }
    if (c->state != C_HEADERS && c->state != C_BODY) return;
    static char buf[RBUF];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r < 0) {
            if (errno == EAGAIN) return;
            finish_response(c, t, 0, deadline);
            return;
        }
        if (r == 0) {
            /* peer closed: clean only for close-delimited bodies */
            if (c->state == C_BODY && c->mode == B_CLOSE) {
                c->ended = 1;
                c->keep_alive = 0;
                finish_response(c, t, 1, deadline);
            } else {
                c->keep_alive = 0;
                finish_response(c, t, 0, deadline);
            }
            return;
        }
        const char *p = buf;
        size_t n = (size_t)r;
        if (c->state == C_HEADERS) {
            size_t room = sizeof c->hbuf - c->hlen;
            size_t take = n < room ? n : room;
            memcpy(c->hbuf + c->hlen, p, take);
            size_t old = c->hlen;
            c->hlen += take;
            char *e = memmem(c->hbuf, c->hlen, "\r\n\r\n", 4);
            if (!e) {
                if (c->hlen == sizeof c->hbuf) {
                    finish_response(c, t, 0, deadline);
                    return;
                }
                continue;
            }
            size_t hend = (size_t)(e - c->hbuf) + 4;
            size_t consumed = hend - old;
            p += consumed;
            n -= consumed;
            if (c->hlen < 12 || memcmp(c->hbuf, "HTTP/1.", 7) != 0) {
                finish_response(c, t, 0, deadline);
                return;
            }
            c->status = atoi(c->hbuf + 9);
            if (c->hbuf[7] == '0') c->keep_alive = header_has(c->hbuf, hend, "connection", "keep-alive");
            if (header_has(c->hbuf, hend, "connection", "close")) c->keep_alive = 0;
            if (header_has(c->hbuf, hend, "transfer-encoding", "chunked")) {
                c->mode = B_CHUNKED;
                c->remaining = 0;
            } else {
                long long cl = header_int(c->hbuf, hend, "content-length");
                if (cl >= 0) {
                    c->mode = B_LENGTH;
                    c->remaining = cl;
                } else {
                    c->mode = B_CLOSE;
                    c->keep_alive = 0;
                }
            }
            c->state = C_BODY;
            if (c->mode == B_LENGTH && c->remaining == 0) {
                c->ended = 1;
                finish_response(c, t, 1, deadline);
                return;
            }
        }
        if (n > 0 && feed_body(c, p, n, t)) {
            finish_response(c, t, 1, deadline);
            return;
        }
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: sseload -p PORT -P PATH -b BODYFILE [-a ADDR] [-H 'Name: value']...\n"
            "               (-d SECONDS -c CONNS | -n COUNT [-C MAX_CONNECTING])\n"
            "               [-r NEW_CONNS_PER_S] [-t TIMEOUT_S] [-e MIN_DATA_LINES] [-E 0|1] [-k 0|1]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *path = NULL, *bodyfile = NULL;
    int port = 0;
    char headers[8192] = "";
    cfg.concurrency = 1;
    cfg.duration = 0;
    cfg.count = 0;
    cfg.max_connecting = 64;
    cfg.timeout = 30;
    cfg.expect_events = 1;
    cfg.expect_done = 1;
    cfg.keepalive = 1;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:P:b:H:c:d:n:C:t:e:E:k:r:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'P': path = optarg; break;
        case 'b': bodyfile = optarg; break;
        case 'H':
            if (strlen(headers) + strlen(optarg) + 3 >= sizeof headers) usage();
            strcat(headers, optarg);
            strcat(headers, "\r\n");
            break;
        case 'c': cfg.concurrency = atoi(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'n': cfg.count = atol(optarg); break;
        case 'C': cfg.max_connecting = atoi(optarg); break;
        case 't': cfg.timeout = atof(optarg); break;
        case 'e': cfg.expect_events = atoi(optarg); break;
        case 'E': cfg.expect_done = atoi(optarg); break;
        case 'k': cfg.keepalive = atoi(optarg); break;
        case 'r': cfg.rate = atof(optarg); break;
        default: usage();
        }
    }
    if (!port || !path || !bodyfile || (cfg.duration <= 0 && cfg.count <= 0)) usage();
    /* Only loopback targets: this tool is a benchmark client for this machine. */
    if (strncmp(addr, "127.", 4) != 0) {
        fprintf(stderr, "sseload: refusing non-loopback address %s\n", addr);
        return 2;
    }
    memset(&cfg.addr, 0, sizeof cfg.addr);
    cfg.addr.sin_family = AF_INET;
    cfg.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &cfg.addr.sin_addr) != 1) usage();

    FILE *f = fopen(bodyfile, "rb");
    if (!f) die("body file");
    fseek(f, 0, SEEK_END);
    long blen = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *body = malloc((size_t)blen + 1);
    if (fread(body, 1, (size_t)blen, f) != (size_t)blen) die("read body");
    fclose(f);
    cfg.request = malloc((size_t)blen + strlen(headers) + strlen(path) + 512);
    int hl = sprintf(cfg.request,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "%sContent-Length: %ld\r\n\r\n",
                     path, addr, port, headers, blen);
    memcpy(cfg.request + hl, body, (size_t)blen);
    cfg.request_len = (size_t)hl + (size_t)blen;

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    long nconns = one_shot() ? cfg.count : cfg.concurrency;
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    for (long i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].state = C_IDLE;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");

    double t0 = now();
    double deadline = one_shot() ? t0 + cfg.timeout : t0 + cfg.duration;
    double hard_end = one_shot() ? deadline : deadline + cfg.timeout;
    if (!one_shot()) {
        for (long i = 0; i < nconns; i++) {
            conns[i].t_start = t0;
            if (open_conn(&conns[i]) < 0) mark_done(&conns[i]);
        }
    }
    struct epoll_event evs[1024];
    double t_all_done = 0;
    for (;;) {
        double t = now();
        if (one_shot()) {
            /* arrivals: at most -r per second since t0, at most -C connecting at once */
            long allowed = cfg.rate > 0 ? (long)((t - t0) * cfg.rate) + 1 : cfg.count;
            while (launched < cfg.count && launched < allowed && connecting_now < cfg.max_connecting) {
                struct conn *c = &conns[launched++];
                conn_reset_response(c);
                c->t_start = now();
                if (open_conn(c) < 0) mark_done(c);
            }
        }
        /* closed loop: after the deadline, in-flight responses are dropped, not counted */
        if (!one_shot() && t >= deadline) break;
        if (t >= hard_end) break;
        if (n_done == nconns) {
            t_all_done = t;
            break;
        }
        double end = one_shot() ? hard_end : deadline;
        int wait_ms = (int)((end - t) * 1000) + 1;
        if (wait_ms > 100) wait_ms = 100;
        if (one_shot() && cfg.rate > 0 && launched < cfg.count) wait_ms = 1; /* keep the arrival pace */
        int k = epoll_wait(epfd, evs, 1024, wait_ms);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) on_event((struct conn *)evs[i].data.ptr, evs[i].events, deadline);
    }
    double t_end = now();
    double elapsed = one_shot() ? (t_all_done ? t_all_done : t_end) - t0 : cfg.duration;
    /* whatever is still open now did not finish in time */
    for (long i = 0; i < nconns; i++) {
        if (conns[i].fd >= 0) {
            if (one_shot()) st.timeouts++;
            close_conn(&conns[i]);
        }
    }
    if (one_shot()) st.timeouts += cfg.count - launched;
    qsort(st.ttfb, st.n, sizeof(double), cmp_double);
    qsort(st.total, st.n, sizeof(double), cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"mode\":\"%s\",\"concurrency\":%ld,\"elapsed_s\":%.4f,\"started\":%ld,\"ok\":%ld,"
           "\"bad_status\":%ld,\"incomplete\":%ld,\"connect_errors\":%ld,\"timeouts\":%ld,"
           "\"streams_per_s\":%.2f,"
           "\"ttfb_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"total_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"status\":{\"2xx\":%ld,\"3xx\":%ld,\"4xx\":%ld,\"5xx\":%ld},\"client_cpu_s\":%.3f,\"peak_active\":%ld}\n",
           one_shot() ? "once" : "loop", nconns, elapsed, st.started, st.ok, st.bad_status, st.incomplete,
           st.connect_errors, st.timeouts, elapsed > 0 ? (double)st.ok / elapsed : 0.0,
           pct(st.ttfb, st.n, 50) * 1e3, pct(st.ttfb, st.n, 90) * 1e3, pct(st.ttfb, st.n, 99) * 1e3,
           st.n ? st.ttfb[st.n - 1] * 1e3 : -1.0, pct(st.total, st.n, 50) * 1e3, pct(st.total, st.n, 90) * 1e3,
           pct(st.total, st.n, 99) * 1e3, st.n ? st.total[st.n - 1] * 1e3 : -1.0, st.status_hist[2],
           st.status_hist[3], st.status_hist[4], st.status_hist[5], cpu, peak_active);
    return 0;
}
