// PUSH process to PULL process as fast as possible, after libzmq's remote_thr / local_thr.
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

struct push_args {
    int endpoint_fds[2];
    size_t size;
    uint64_t count;
};

static int push_main(void *arg)
{
    struct push_args *a = arg;
    close_fd(a->endpoint_fds[1]);
    char endpoint[ENDPOINT_MAX];
    read_endpoint(a->endpoint_fds[0], endpoint);
    close_fd(a->endpoint_fds[0]);

    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *push = ZCHECK_PTR(zmq_socket(ctx, ZMQ_PUSH));
    ZCHECK(zmq_connect(push, endpoint));
    zmq_msg_t msg;
    for (uint64_t i = 0; i < a->count; i++) {
        // Like remote_thr: a fresh message of the right size each time, payload left as allocated.
        ZCHECK(zmq_msg_init_size(&msg, a->size));
        ZCHECK(zmq_msg_send(&msg, push, 0));
    }
    ZCHECK(zmq_close(push));
    // The default infinite linger makes this wait until every message has reached the PULL side.
    ZCHECK(zmq_ctx_term(ctx));
    return 0;
}

int run_throughput(const struct options *opt)
{
    struct push_args args = { .size = (size_t)opt->size, .count = opt->count };
    make_pipe(args.endpoint_fds);
    pid_t pusher = spawn("push", push_main, &args);
    close_fd(args.endpoint_fds[0]);

    void *ctx = ZCHECK_PTR(zmq_ctx_new());
    void *pull = ZCHECK_PTR(zmq_socket(ctx, ZMQ_PULL));
    set_int_option(pull, ZMQ_RCVTIMEO, SUPERVISE_MS);
    char endpoint[ENDPOINT_MAX];
    bind_any(pull, endpoint);
    write_all(args.endpoint_fds[1], endpoint, sizeof endpoint);
    close_fd(args.endpoint_fds[1]);

    zmq_msg_t msg;
    ZCHECK(zmq_msg_init(&msg));
    int64_t first = 0, last = 0, idle_since = now_ns();
    for (uint64_t received = 0; received < opt->count;) {
        int n = zmq_msg_recv(&msg, pull, 0);
        if (n == -1) {
            if (errno != EAGAIN && errno != EINTR) zmq_fail("zmq_msg_recv");
            check_children();
            if (now_ns() - idle_since > 10 * 1000000000LL) fail("no message for 10 s after %llu", (unsigned long long)received);
            continue;
        }
        idle_since = last = now_ns();
        if (received == 0) first = last;
        if ((size_t)n != args.size) fail("message of %d bytes, expected %zu", n, args.size);
        received++;
    }
    ZCHECK(zmq_msg_close(&msg));
    ZCHECK(zmq_close(pull));
    ZCHECK(zmq_ctx_term(ctx));
    wait_child(pusher, 10000);

    double seconds = (double)(last - first) / 1e9;
    // Messages per second as local_thr counts them: all messages over the first-to-last interval.
    // Megabytes are 10^6 bytes of payload, as in herald bench's own report.
    double rate = (double)opt->count / seconds;
    printf("{\"test\":\"pushpull_throughput\",\"size\":%zu,\"count\":%llu,\"msgs_per_s\":%.1f,"
           "\"mbytes_per_s\":%.2f,\"seconds\":%.6f}",
           args.size, (unsigned long long)opt->count, rate, rate * (double)args.size / 1e6, seconds);
    finish_output();
    return 0;
}
