// PUB process -> zmq_proxy process (XSUB/XPUB) -> SUB process: what a broker that adds nothing would achieve.
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

// Every message: topic prefix, sequence number, CLOCK_MONOTONIC send time in ns, then padding up to --size.
// Integers are in host byte order: sender and receiver are always the same machine.
#define TOPIC "hzb."
#define TOPIC_LEN 4
#define SEQ_OFFSET TOPIC_LEN
#define SENT_OFFSET (SEQ_OFFSET + 8)
// Probes share the topic (they must pass the same subscription) but carry a sequence no data message uses.
_Static_assert(SENT_OFFSET + 8 == PROXY_HEADER_SIZE, "header layout and PROXY_HEADER_SIZE disagree");
#define PROBE_SEQ UINT64_MAX
// After this long without a message the subscriber assumes the rest was dropped.
#define SILENCE_NS (2 * 1000000000LL)

struct proxy_endpoints {
    char xsub[ENDPOINT_MAX];
    char xpub[ENDPOINT_MAX];
    char control[ENDPOINT_MAX];
};

struct proxy_args {
    int endpoint_fds[2];
};

struct publisher_args {
    int go_fds[2];
    const char *endpoint;
    const struct options *opt;
};

static int proxy_main(void *arg)
{
    struct proxy_args *a = arg;
    close_fd(a->endpoint_fds[0]);
    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *xsub = ZCHECK_PTR(zmq_socket(ctx, ZMQ_XSUB));
    void *xpub = ZCHECK_PTR(zmq_socket(ctx, ZMQ_XPUB));
    void *control = ZCHECK_PTR(zmq_socket(ctx, ZMQ_PAIR));
    struct proxy_endpoints ep;
    memset(&ep, 0, sizeof ep);
    bind_any(xsub, ep.xsub);
    bind_any(xpub, ep.xpub);
    // The parent stops the proxy with TERMINATE here: zmq_proxy alone only returns when its context dies.
    bind_any(control, ep.control);
    write_all(a->endpoint_fds[1], &ep, sizeof ep);
    close_fd(a->endpoint_fds[1]);

    ZCHECK(zmq_proxy_steerable(xsub, xpub, NULL, control));

    // Whatever is still queued once the measurement is over has no reader that cares.
    set_int_option(xsub, ZMQ_LINGER, 0);
    set_int_option(xpub, ZMQ_LINGER, 0);
    set_int_option(control, ZMQ_LINGER, 0);
    ZCHECK(zmq_close(xsub));
    ZCHECK(zmq_close(xpub));
    ZCHECK(zmq_close(control));
    ZCHECK(zmq_ctx_term(ctx));
    return 0;
}

static void fill_header(char *buf, uint64_t seq)
{
    int64_t sent = now_ns();
    memcpy(buf + SEQ_OFFSET, &seq, sizeof seq);
    memcpy(buf + SENT_OFFSET, &sent, sizeof sent);
}

// Probes go out until the subscriber says one arrived: only then is its subscription known to have reached
// this PUB socket, which silently drops everything sent before (the slow-joiner problem).
static void await_subscriber(void *pub, char *buf, size_t size, int go_fd)
{
    struct pollfd pfd = { .fd = go_fd, .events = POLLIN };
    for (;;) {
        fill_header(buf, PROBE_SEQ);
        ZCHECK(zmq_send(pub, buf, size, ZMQ_DONTWAIT));
        int rc = poll(&pfd, 1, 1);
        if (rc == -1 && errno != EINTR) sys_fail("poll");
        if (rc > 0) {
            char go;
            read_all(go_fd, &go, 1);
            return;
        }
    }
}

static int publisher_main(void *arg)
{
    struct publisher_args *a = arg;
    close_fd(a->go_fds[1]);
    size_t size = (size_t)a->opt->size;
    char *buf = malloc(size);
    if (buf == NULL) fail("out of memory");
    memset(buf, 'x', size);
    memcpy(buf, TOPIC, TOPIC_LEN);

    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *pub = ZCHECK_PTR(zmq_socket(ctx, ZMQ_PUB));
    ZCHECK(zmq_connect(pub, a->endpoint));
    await_subscriber(pub, buf, size, a->go_fds[0]);
    close_fd(a->go_fds[0]);

    struct pacer pacer;
    pacer_start(&pacer, a->opt->rate);
    for (uint64_t seq = 0; seq < a->opt->count; seq++) {
        pacer_wait(&pacer);
        fill_header(buf, seq);
        // PUB never blocks: at the high-water mark it drops, which the subscriber sees as sequence gaps.
        ZCHECK(zmq_send(pub, buf, size, 0));
    }
    ZCHECK(zmq_close(pub));
    // Infinite linger: everything PUB accepted is handed to the proxy before this process exits.
    ZCHECK(zmq_ctx_term(ctx));
    free(buf);
    return 0;
}

// Receives the next message's header, or returns -1 after idle_ns of silence.
static int receive_header(void *sub, char header[PROXY_HEADER_SIZE], size_t size, int64_t idle_ns)
{
    int64_t since = now_ns();
    for (;;) {
        // Only the header is copied out; zmq_recv still reports the full message size.
        int n = zmq_recv(sub, header, PROXY_HEADER_SIZE, 0);
        if (n >= 0) {
            if ((size_t)n != size || memcmp(header, TOPIC, TOPIC_LEN) != 0)
                fail("unexpected message of %d bytes (expected %zu starting with \"" TOPIC "\")", n, size);
            return n;
        }
        if (errno != EAGAIN && errno != EINTR) zmq_fail("zmq_recv");
        check_children();
        if (now_ns() - since >= idle_ns) return -1;
    }
}

int run_proxy_chain(const struct options *opt)
{
    size_t size = (size_t)opt->size;
    bool latency_mode = opt->rate != 0;
    uint64_t *samples = NULL;
    if (latency_mode) {
        samples = malloc((size_t)opt->count * sizeof *samples);
        if (samples == NULL) fail("out of memory for %llu samples", (unsigned long long)opt->count);
    }

    // Both children are forked before this process creates a libzmq context, which must not cross a fork.
    struct proxy_args proxy_args;
    make_pipe(proxy_args.endpoint_fds);
    pid_t proxy = spawn("proxy", proxy_main, &proxy_args);
    close_fd(proxy_args.endpoint_fds[1]);
    struct proxy_endpoints ep;
    read_all(proxy_args.endpoint_fds[0], &ep, sizeof ep);
    close_fd(proxy_args.endpoint_fds[0]);
    ep.xsub[ENDPOINT_MAX - 1] = ep.xpub[ENDPOINT_MAX - 1] = ep.control[ENDPOINT_MAX - 1] = '\0';

    struct publisher_args pub_args = { .endpoint = ep.xsub, .opt = opt };
    make_pipe(pub_args.go_fds);
    pid_t publisher = spawn("publisher", publisher_main, &pub_args);
    close_fd(pub_args.go_fds[0]);

    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *sub = ZCHECK_PTR(zmq_socket(ctx, ZMQ_SUB));
    set_int_option(sub, ZMQ_RCVTIMEO, SUPERVISE_MS);
    set_int_option(sub, ZMQ_LINGER, 0);
    ZCHECK(zmq_setsockopt(sub, ZMQ_SUBSCRIBE, TOPIC, TOPIC_LEN));
    ZCHECK(zmq_connect(sub, ep.xpub));
    void *control = ZCHECK_PTR(zmq_socket(ctx, ZMQ_PAIR));
    set_int_option(control, ZMQ_LINGER, 1000);
    ZCHECK(zmq_connect(control, ep.control));

    char header[PROXY_HEADER_SIZE];
    uint64_t seq;
    do {
        if (receive_header(sub, header, size, 10 * 1000000000LL) < 0) fail("no probe reached the subscriber in 10 s");
        memcpy(&seq, header + SEQ_OFFSET, sizeof seq);
    } while (seq != PROBE_SEQ);
    write_all(pub_args.go_fds[1], "g", 1);
    close_fd(pub_args.go_fds[1]);

    uint64_t received = 0, lost = 0, expected = 0;
    int64_t first = 0, last = 0, first_sent = 0, last_sent = 0;
    uint64_t first_seq = 0;
    while (expected < opt->count) {
        if (receive_header(sub, header, size, SILENCE_NS) < 0) break;
        int64_t now = now_ns(), sent;
        memcpy(&seq, header + SEQ_OFFSET, sizeof seq);
        memcpy(&sent, header + SENT_OFFSET, sizeof sent);
        if (seq == PROBE_SEQ) continue;   // sent before the publisher saw the go signal
        // One TCP path, one publisher: messages can go missing but never come twice or out of order.
        if (seq < expected || seq >= opt->count)
            fail("sequence %llu out of order (expected %llu or later)", (unsigned long long)seq,
                 (unsigned long long)expected);
        lost += seq - expected;
        expected = seq + 1;
        if (received == 0) {
            first = now;
            first_sent = sent;
            first_seq = seq;
        }
        last = now;
        last_sent = sent;
        if (latency_mode) samples[received] = (uint64_t)(now - sent);
        received++;
    }
    lost += opt->count - expected;   // the tail that never arrived

    wait_child(publisher, 10000);
    ZCHECK(zmq_send(control, "TERMINATE", 9, 0));
    ZCHECK(zmq_close(sub));
    ZCHECK(zmq_close(control));
    ZCHECK(zmq_ctx_term(ctx));
    wait_child(proxy, 10000);

    if (latency_mode) {
        // The rate the publisher sent at, from the first and last messages received: their sequence numbers
        // count the messages sent between them, lost ones included.
        double sent_per_s = received > 1 && last_sent > first_sent
                                ? (double)(expected - 1 - first_seq) * 1e9 / (double)(last_sent - first_sent)
                                : 0;
        printf("{\"test\":\"proxy_chain_latency\",\"size\":%zu,\"count\":%llu,\"rate\":%llu,\"sent_per_s\":%.1f,"
               "\"received\":%llu,\"lost\":%llu,\"one_way_us\":",
               size, (unsigned long long)opt->count, (unsigned long long)opt->rate, sent_per_s,
               (unsigned long long)received, (unsigned long long)lost);
        print_latency_summary(samples, (size_t)received, 1.0);
        printf("}");
    } else {
        double seconds = (double)(last - first) / 1e9;
        printf("{\"test\":\"proxy_chain_throughput\",\"size\":%zu,\"sent\":%llu,\"received\":%llu,\"lost\":%llu,",
               size, (unsigned long long)opt->count, (unsigned long long)received, (unsigned long long)lost);
        if (seconds > 0)
            printf("\"msgs_per_s\":%.1f,\"seconds\":%.6f}", (double)received / seconds, seconds);
        else   // fewer than two messages arrived: no interval to divide by
            printf("\"msgs_per_s\":null,\"seconds\":%.6f}", seconds);
    }
    finish_output();
    free(samples);
    return 0;
}
