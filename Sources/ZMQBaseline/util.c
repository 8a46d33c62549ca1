#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

const char *bench_role = "main";

struct child {
    pid_t pid;
    const char *role;
    bool reaped;
};

#define MAX_CHILDREN 4
static struct child children[MAX_CHILDREN];
static int child_count;
static bool in_child;

static void kill_children(void)
{
    for (int i = 0; i < child_count; i++) {
        if (children[i].reaped) continue;
        kill(children[i].pid, SIGKILL);
        while (waitpid(children[i].pid, NULL, 0) == -1 && errno == EINTR) {}
        children[i].reaped = true;
    }
}

void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "herald-zmq-baseline [%s]: ", bench_role);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    // A child must not run exit handlers or flush stdio buffers it inherited from the parent.
    if (in_child) _exit(1);
    kill_children();
    exit(1);
}

void zmq_fail(const char *call) { fail("%s failed: %s", call, zmq_strerror(errno)); }
void sys_fail(const char *call) { fail("%s failed: %s", call, strerror(errno)); }

void *zcheck_ptr(void *p, const char *call)
{
    if (p == NULL) zmq_fail(call);
    return p;
}

pid_t spawn(const char *role, int (*body)(void *), void *arg)
{
    if (child_count == MAX_CHILDREN) fail("too many child processes");
    pid_t parent = getpid();
    fflush(NULL);   // or buffered output would be written twice
    pid_t pid = fork();
    if (pid == -1) sys_fail("fork");
    if (pid == 0) {
        in_child = true;
        child_count = 0;
        bench_role = role;
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1) sys_fail("prctl(PR_SET_PDEATHSIG)");
        // The parent may have died before prctl took effect; then nobody would ever kill us.
        if (getppid() != parent) _exit(1);
        _exit(body(arg));
    }
    children[child_count++] = (struct child){ .pid = pid, .role = role };
    return pid;
}

static void reaped(struct child *c, int status)
{
    c->reaped = true;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    if (WIFSIGNALED(status))
        fail("%s process %d was killed by signal %d (%s)", c->role, (int)c->pid, WTERMSIG(status),
             strsignal(WTERMSIG(status)));
    fail("%s process %d exited with status %d", c->role, (int)c->pid, WEXITSTATUS(status));
}

void check_children(void)
{
    for (int i = 0; i < child_count; i++) {
        if (children[i].reaped) continue;
        int status;
        pid_t r = waitpid(children[i].pid, &status, WNOHANG);
        if (r == -1 && errno != EINTR) sys_fail("waitpid");
        if (r == children[i].pid) reaped(&children[i], status);
    }
}

void wait_child(pid_t pid, int timeout_ms)
{
    struct child *c = NULL;
    for (int i = 0; i < child_count; i++)
        if (children[i].pid == pid) c = &children[i];
    if (c == NULL) fail("wait_child: %d is not a child", (int)pid);
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
    while (!c->reaped) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == -1 && errno != EINTR) sys_fail("waitpid");
        if (r == pid) {
            reaped(c, status);
            break;
        }
        if (now_ns() >= deadline) fail("%s process %d did not exit within %d ms", c->role, (int)pid, timeout_ms);
        struct timespec tick = { 0, 5 * 1000000 };
        nanosleep(&tick, NULL);
    }
}

void make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) == -1) sys_fail("pipe2");
}

void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) sys_fail("write to pipe");
        p += n;
        len -= (size_t)n;
    }
}

void read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) sys_fail("read from pipe");
        if (n == 0) fail("pipe closed early: the peer process is gone");
        p += n;
        len -= (size_t)n;
    }
}

void close_fd(int fd)
{
    // On Linux the descriptor is released even when close reports EINTR, so no retry.
    if (close(fd) == -1 && errno != EINTR) sys_fail("close");
}

void bind_any(void *socket, char endpoint[ENDPOINT_MAX])
{
    ZCHECK(zmq_bind(socket, "tcp://127.0.0.1:*"));
    size_t len = ENDPOINT_MAX;
    ZCHECK(zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, endpoint, &len));
    endpoint[ENDPOINT_MAX - 1] = '\0';
}

void read_endpoint(int fd, char endpoint[ENDPOINT_MAX])
{
    read_all(fd, endpoint, ENDPOINT_MAX);
    endpoint[ENDPOINT_MAX - 1] = '\0';
}

void set_int_option(void *socket, int option, int value)
{
    ZCHECK(zmq_setsockopt(socket, option, &value, sizeof value));
}

int64_t now_ns(void)
{
    struct timespec ts;
    // CLOCK_MONOTONIC is one clock for the whole host, so a time taken in one process is comparable in another.
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void pacer_start(struct pacer *p, uint64_t rate)
{
    p->period_ns = rate == 0 ? 0 : (int64_t)(1000000000 / rate);
    if (rate != 0 && p->period_ns == 0) p->period_ns = 1;
    p->next_ns = now_ns();
    // Linux may end a sleep up to 50 us late by default (the timer slack), half the period at 10,000/s. Herald's
    // pacing thread asks for the least slack too, so both sides pace alike. A refusal only costs precision.
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
}

void pacer_wait(struct pacer *p)
{
    if (p->period_ns == 0) return;
    int64_t now = now_ns();
    // A slot that passed while the sender was late is taken at once, as `herald publish --rate` does, so that the
    // rate asked for is the rate sent: skipping late slots instead ran this side at half the rate of Herald's on a
    // machine whose sleeps end 100 us late. Only after a stall of more than a second are the slots missed given
    // up, again as Herald does.
    if (p->next_ns < now - 1000000000) p->next_ns = now - 1000000000;
    if (p->next_ns > now) {
        struct timespec at = { (time_t)(p->next_ns / 1000000000), (long)(p->next_ns % 1000000000) };
        int rc;
        while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL)) == EINTR) {}
        if (rc != 0) {
            errno = rc;
            sys_fail("clock_nanosleep");
        }
    }
    p->next_ns += p->period_ns;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

// Nearest-rank percentile: the smallest sample with at least `per_100k`/100000 of all samples at or below it.
static uint64_t percentile(const uint64_t *sorted, size_t n, uint64_t per_100k)
{
    uint64_t rank = ((uint64_t)n * per_100k + 99999) / 100000;
    return sorted[rank == 0 ? 0 : rank - 1];
}

void print_latency_summary(uint64_t *samples, size_t n, double divisor)
{
    if (n == 0) {
        printf("null");
        return;
    }
    qsort(samples, n, sizeof *samples, compare_u64);
    double us = 1000.0 * divisor;
    printf("{\"min\":%.2f,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f}",
           (double)samples[0] / us, (double)percentile(samples, n, 50000) / us,
           (double)percentile(samples, n, 90000) / us, (double)percentile(samples, n, 99000) / us,
           (double)percentile(samples, n, 99900) / us, (double)samples[n - 1] / us);
}

void finish_output(void)
{
    putchar('\n');
    if (fflush(stdout) == EOF || ferror(stdout)) sys_fail("writing the result to stdout");
}
