// Shared helpers of herald-zmq-baseline: failure reporting, child processes, clocks, pacing, statistics.
#ifndef HERALD_ZMQ_BASELINE_BENCH_H
#define HERALD_ZMQ_BASELINE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct options {
    uint64_t size;
    uint64_t count;
    uint64_t rate;   // 0 = back to back
    uint64_t warmup;
};

int run_latency(const struct options *opt);
int run_throughput(const struct options *opt);
int run_proxy_chain(const struct options *opt);

// What a proxy-chain message must hold: topic prefix (4), sequence number (8), send time (8).
#define PROXY_HEADER_SIZE 20

// Large enough for any "tcp://127.0.0.1:PORT"; libzmq itself caps option strings at 256.
#define ENDPOINT_MAX 256

// How often blocked receives in the parent wake up to notice a child that died.
#define SUPERVISE_MS 100

// Name of the running process in diagnostics ("main", "rep", "publisher", ...).
extern const char *bench_role;

_Noreturn void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void zmq_fail(const char *call);   // reports zmq_strerror(errno)
_Noreturn void sys_fail(const char *call);   // reports strerror(errno)

#define ZCHECK(call) do { if ((call) == -1) zmq_fail(#call); } while (0)
void *zcheck_ptr(void *p, const char *call);
#define ZCHECK_PTR(call) zcheck_ptr((call), #call)

// Runs body(arg) in a forked child that dies with the parent; returns the child's pid in the parent.
pid_t spawn(const char *role, int (*body)(void *), void *arg);
// Reaps children that exited; fails (killing the others) if one exited with an error.
void check_children(void);
// Waits for one child to exit successfully within timeout_ms, else fails.
void wait_child(pid_t pid, int timeout_ms);

void make_pipe(int fds[2]);
void write_all(int fd, const void *buf, size_t len);
void read_all(int fd, void *buf, size_t len);
void close_fd(int fd);

// Bind to a free loopback port and hand the resolved endpoint down a pipe; the child side reads it.
void bind_any(void *socket, char endpoint[ENDPOINT_MAX]);
void read_endpoint(int fd, char endpoint[ENDPOINT_MAX]);
void set_int_option(void *socket, int option, int value);

int64_t now_ns(void);

struct pacer {
    int64_t period_ns;   // 0 = no pacing
    int64_t next_ns;
};
void pacer_start(struct pacer *p, uint64_t rate);
// Waits for the next slot; slots that passed are taken at once, up to a second's worth.
void pacer_wait(struct pacer *p);

// Sorts samples (ns) in place and prints {"min":..,"p50":..,...,"max":..} in microseconds, each divided by divisor.
void print_latency_summary(uint64_t *samples, size_t n, double divisor);
void finish_output(void);

#endif
