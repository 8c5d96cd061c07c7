#include "core/tp_util.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int64_t
clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tp_now_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }
int64_t tp_now_real_ms(void) { return clock_ms(CLOCK_REALTIME); }

int
tp_fd_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl == -1)
		return -1;
	return fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1 ? -1 : 0;
}

int
tp_fd_set_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl == -1)
		return -1;
	return fcntl(fd, F_SETFD, fl | FD_CLOEXEC) == -1 ? -1 : 0;
}

static int
fill_random(void *p, size_t n)
{
	uint8_t *b = p;
	while (n > 0) {
		ssize_t r = getrandom(b, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

int
tp_uuid4(char out[37])
{
	uint8_t u[16];
	if (fill_random(u, sizeof(u)) != 0)
		return -1;
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
	snprintf(out, 37,
	    "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
	    u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
	    u[12], u[13], u[14], u[15]);
	return 0;
}

double
tp_random_unit(void)
{
	static int seeded;
	static unsigned short xs[3];
	if (!seeded || seeded != (int)getpid()) {
		if (fill_random(xs, sizeof(xs)) != 0) {
			xs[0] = (unsigned short)getpid();
			xs[1] = (unsigned short)time(NULL);
		}
		seeded = (int)getpid();
	}
	return erand48(xs);
}

int
tp_parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static char  *title_start;
static size_t title_len;

void
tp_proctitle_init(int argc, char **argv)
{
	char *end;

	if (argc < 1 || argv[0] == NULL)
		return;
	/* Only the contiguous argv strings are reused; the environment is left alone. */
	end = argv[0] + strlen(argv[0]);
	for (int i = 1; i < argc && argv[i] == end + 1; i++)
		end = argv[i] + strlen(argv[i]);
	title_start = argv[0];
	title_len = (size_t)(end - argv[0]);
}

void
tp_proctitle_set(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	prctl(PR_SET_NAME, buf, 0, 0, 0);
	if (title_start == NULL)
		return;
	n = strlen(buf);
	if (n > title_len)
		n = title_len;
	memset(title_start, '\0', title_len + 1);
	memcpy(title_start, buf, n);
}

void
tp_timer_in(struct event *ev, int64_t ms)
{
	struct timeval tv;

	if (ms < 0)
		ms = 0;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
	evtimer_add(ev, &tv);
}

void
tp_sig_reset_after_fork(int keep)
{
	struct sigaction sa;
	sigset_t none;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (int s = 1; s < NSIG; s++)
		if (s != keep)
			(void)sigaction(s, &sa, NULL);  /* EINVAL for KILL, STOP and libc-reserved ones */
	sigemptyset(&none);
	(void)sigprocmask(SIG_SETMASK, &none, NULL);
}
