// REQ/REP ping-pong between two processes: one-way latency = round trip / 2.
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct echo_args {
    int endpoint_fds[2];
    uint64_t round_trips;
};

static int echo_main(void *arg)
{
    struct echo_args *a = arg;
    close_fd(a->endpoint_fds[1]);
    char endpoint[ENDPOINT_MAX];
    read_endpoint(a->endpoint_fds[0], endpoint);
    close_fd(a->endpoint_fds[0]);

    // The context is made only after fork: a libzmq context (and its I/O threads) never survives a fork.
    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *rep = ZCHECK_PTR(zmq_socket(ctx, ZMQ_REP));
    ZCHECK(zmq_connect(rep, endpoint));
    zmq_msg_t msg;
    ZCHECK(zmq_msg_init(&msg));
    for (uint64_t i = 0; i < a->round_trips; i++) {
        ZCHECK(zmq_msg_recv(&msg, rep, 0));
        // Sending the received message back moves it without copying the payload.
        ZCHECK(zmq_msg_send(&msg, rep, 0));
    }
    ZCHECK(zmq_msg_close(&msg));
    ZCHECK(zmq_close(rep));
    ZCHECK(zmq_ctx_term(ctx));
    return 0;
}

// Waits for the reply; the short receive timeout only serves to notice a dead peer.
static void receive_reply(void *req, char *buf, size_t size)
{
    int64_t since = now_ns();
    for (;;) {
        int n = zmq_recv(req, buf, size, 0);
        if (n >= 0) {
            if ((size_t)n != size) fail("reply of %d bytes, expected %zu", n, size);
            return;
        }
        if (errno != EAGAIN && errno != EINTR) zmq_fail("zmq_recv");
        check_children();
        if (now_ns() - since > 10 * 1000000000LL) fail("no reply for 10 s");
    }
}

int run_latency(const struct options *opt)
{
    size_t size = (size_t)opt->size;
    uint64_t *samples = malloc((size_t)opt->count * sizeof *samples);
    char *buf = malloc(size);
    if (samples == NULL || buf == NULL) fail("out of memory for %llu samples", (unsigned long long)opt->count);
    memset(buf, 'x', size);

    struct echo_args args = { .round_trips = opt->warmup + opt->count };
    make_pipe(args.endpoint_fds);
    pid_t echo = spawn("rep", echo_main, &args);
    close_fd(args.endpoint_fds[0]);

    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *req = ZCHECK_PTR(zmq_socket(ctx, ZMQ_REQ));
    set_int_option(req, ZMQ_RCVTIMEO, SUPERVISE_MS);
    char endpoint[ENDPOINT_MAX];
    bind_any(req, endpoint);
    write_all(args.endpoint_fds[1], endpoint, sizeof endpoint);
    close_fd(args.endpoint_fds[1]);

    struct pacer pacer;
    pacer_start(&pacer, opt->rate);
    int64_t first_start = 0, last_start = 0;
    for (uint64_t i = 0; i < opt->warmup + opt->count; i++) {
        pacer_wait(&pacer);
        int64_t start = now_ns();
        if (i == 0) first_start = start;
        last_start = start;
        ZCHECK(zmq_send(req, buf, size, 0));
        receive_reply(req, buf, size);
        int64_t rtt = now_ns() - start;
        if (i >= opt->warmup) samples[i - opt->warmup] = (uint64_t)rtt;
    }

    ZCHECK(zmq_close(req));
    ZCHECK(zmq_ctx_term(ctx));
    wait_child(echo, 10000);

    // A round trip longer than the period holds the next request back: then fewer than `rate` went out a second.
    uint64_t requests = opt->warmup + opt->count;
    double sent_per_s =
        requests > 1 && last_start > first_start ? (double)(requests - 1) * 1e9 / (double)(last_start - first_start) : 0;
    printf("{\"test\":\"reqrep_latency\",\"size\":%zu,\"count\":%llu,\"rate\":%llu,\"sent_per_s\":%.1f,"
           "\"warmup\":%llu,\"one_way_us\":",
           size, (unsigned long long)opt->count, (unsigned long long)opt->rate, sent_per_s,
           (unsigned long long)opt->warmup);
    print_latency_summary(samples, (size_t)opt->count, 2.0);
    printf("}");
    finish_output();
    free(samples);
    free(buf);
    return 0;
}
