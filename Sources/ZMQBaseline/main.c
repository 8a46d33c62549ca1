// herald-zmq-baseline: raw libzmq figures for this machine, the floor Herald's own benchmarks are compared with.
// Every peer is a separate process, as Herald's publisher, broker and subscriber are.
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZE (16u << 20)
#define MAX_COUNT 1000000000u
#define MAX_RATE 10000000u

enum command { LATENCY = 1, THROUGHPUT = 2, PROXY_CHAIN = 4 };

static void usage(void)
{
    fprintf(stderr,
            "usage: herald-zmq-baseline COMMAND [OPTIONS]\n"
            "\n"
            "Raw libzmq over loopback TCP, every peer in its own process; prints one JSON object on stdout.\n"
            "\n"
            "  latency     --size BYTES --count N [--rate MSGS_PER_S] [--warmup N]\n"
            "              REQ/REP ping-pong; one-way latency = round trip / 2. Without --rate back to back;\n"
            "              --warmup round trips (default 1000) are not recorded.\n"
            "  throughput  --size BYTES --count N\n"
            "              PUSH process to PULL process as fast as possible (N >= 2).\n"
            "  proxy-chain --size BYTES --count N [--rate MSGS_PER_S]\n"
            "              PUB process -> zmq_proxy XSUB/XPUB process -> SUB process. Without --rate: throughput\n"
            "              and loss at full speed; with --rate: one-way latency of paced messages.\n"
            "              BYTES >= %d (topic prefix, sequence number and send time travel in every message).\n"
            "\n"
            "BYTES: 1..%u; N: 1..%u; MSGS_PER_S: 1..%u. Options also take the form --name=VALUE.\n"
            "Exit status: 0 success, 1 measurement failed, 2 bad arguments.\n",
            PROXY_HEADER_SIZE, MAX_SIZE, MAX_COUNT, MAX_RATE);
}

__attribute__((format(printf, 1, 2))) _Noreturn static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("herald-zmq-baseline: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    usage();
    exit(2);
}

static uint64_t parse_number(const char *name, const char *text, uint64_t min, uint64_t max)
{
    // strtoull would accept " 12", "+12" and wrap "-12"; only plain digits are a number here.
    bool digits = text[0] != '\0';
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9') digits = false;
    errno = 0;
    unsigned long long value = digits ? strtoull(text, NULL, 10) : 0;
    if (!digits || errno == ERANGE || value < min || value > max)
        usage_error("%s needs a whole number from %llu to %llu, got '%s'", name, (unsigned long long)min,
                    (unsigned long long)max, text);
    return value;
}

struct option_spec {
    const char *name;
    int commands;   // the commands that accept it
    uint64_t min, max;
    uint64_t *value;
    bool given;
};

int main(int argc, char **argv)
{
    if (argc < 2) usage_error("missing command");
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage();
        return 0;
    }
    enum command command;
    if (strcmp(argv[1], "latency") == 0) command = LATENCY;
    else if (strcmp(argv[1], "throughput") == 0) command = THROUGHPUT;
    else if (strcmp(argv[1], "proxy-chain") == 0) command = PROXY_CHAIN;
    else usage_error("unknown command '%s'", argv[1]);

    struct options opt = { .warmup = 1000 };
    struct option_spec specs[] = {
        { "--size", LATENCY | THROUGHPUT | PROXY_CHAIN, 1, MAX_SIZE, &opt.size, false },
        { "--count", LATENCY | THROUGHPUT | PROXY_CHAIN, 1, MAX_COUNT, &opt.count, false },
        { "--rate", LATENCY | PROXY_CHAIN, 1, MAX_RATE, &opt.rate, false },
        { "--warmup", LATENCY, 0, MAX_COUNT, &opt.warmup, false },
    };
    const size_t nspecs = sizeof specs / sizeof specs[0];

    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage();
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) usage_error("unexpected argument '%s'", arg);
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        struct option_spec *spec = NULL;
        for (size_t s = 0; s < nspecs; s++)
            if (strlen(specs[s].name) == name_len && strncmp(arg, specs[s].name, name_len) == 0) spec = &specs[s];
        if (spec == NULL) usage_error("unknown option '%.*s'", (int)name_len, arg);
        if (!(spec->commands & command)) usage_error("%s does not take %s", argv[1], spec->name);
        if (spec->given) usage_error("%s given twice", spec->name);
        const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (value == NULL) usage_error("%s needs a value", spec->name);
        *spec->value = parse_number(spec->name, value, spec->min, spec->max);
        spec->given = true;
    }
    if (!specs[0].given) usage_error("%s needs --size", argv[1]);
    if (!specs[1].given) usage_error("%s needs --count", argv[1]);
    if (command == PROXY_CHAIN && opt.size < PROXY_HEADER_SIZE)
        usage_error("proxy-chain needs --size of at least %d: every message carries a 4-byte topic prefix, "
                    "an 8-byte sequence number and an 8-byte send time",
                    PROXY_HEADER_SIZE);
    if (command == THROUGHPUT && opt.count < 2)
        usage_error("throughput needs --count of at least 2: it times the first to the last message");

    // A peer that dies makes writes to its pipe fail with EPIPE, reported like any other error, not kill us.
    signal(SIGPIPE, SIG_IGN);

    switch (command) {
    case LATENCY: return run_latency(&opt);
    case THROUGHPUT: return run_throughput(&opt);
    case PROXY_CHAIN: return run_proxy_chain(&opt);
    }
    return 2;
}
