/* tp_util: small system helpers with no process or protocol knowledge. */
#ifndef TP_UTIL_H
#define TP_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC / CLOCK_REALTIME. */
int64_t tp_now_mono_ms(void);
int64_t tp_now_real_ms(void);

/* fd flags; return 0 or -1 with errno set. */
int tp_fd_set_nonblock(int fd);
int tp_fd_set_cloexec(int fd);

/* After fork, before exec: every signal's disposition back to the default (ignored ones would
 * survive execve) but `keep` (0: none), then an empty mask (the mask survives execve too).
 * Async-signal-safe. */
void tp_sig_reset_after_fork(int keep);

/* Write a random (version 4) UUID as 36 characters plus NUL into out[37]. Returns 0 or -1. */
int tp_uuid4(char out[37]);

/* Uniform random double in [0, 1) from a per-process PRNG seeded from getrandom(). */
double tp_random_unit(void);

/* Parse a whole decimal string into a long within [min, max]. Returns 0 or -1 (nothing set). */
int tp_parse_long(const char *s, long min, long max, long *out);



struct event;
/* Arm a libevent timer to fire in ms milliseconds (negative: at once). */
void tp_timer_in(struct event *ev, int64_t ms);

/* Process titles (ps, top): keep argv's memory at start, then overwrite it with a title. */
void tp_proctitle_init(int argc, char **argv);
void tp_proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
