/* tp-grpc-call: call one gRPC method (unary) and print the status.
 *
 *   tp-grpc-call [options] HOST:PORT /package.Service/Method
 *
 * The request is empty unless -d (hex) or -f (file) gives one. With -n N, N calls run
 * concurrently on the one channel and a summary per status code is printed; with -r R the batch
 * runs R times, -i MS apart, on the same channel (long runs see the server's GOAWAYs and the
 * keepalive PINGs). The channel is closed gracefully at the end. Exit status: 0 when every call
 * returned OK (or the code given with -e), 1 otherwise, 2 on usage errors.
 */
#include "config.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/tp_util.h"
#include "transport/tp_grpc.h"

#define MAX_HEADERS 16

struct tool {
	struct event_base      *base;
	struct tp_grpc_channel *ch;
	long                    ncalls;
	long                    left;
	long                    rounds;        /* batches still to start after this one */
	long                    interval_ms;
	long                    total;
	const char             *path;
	const uint8_t          *req;
	size_t                  reqlen;
	long                    timeout_ms;
	struct event           *next_ev;
	long                    counts[17];
	long                    other;
	bool                    hex;
	bool                    quiet;
	int64_t                 started;
};

static void
usage(void)
{
	fprintf(stderr,
	    "usage: tp-grpc-call [options] HOST:PORT /package.Service/Method\n"
	    "  -s, --tls               use TLS (ALPN h2)\n"
	    "      --ca FILE           CA bundle (default: system roots)\n"
	    "      --cert FILE         client certificate\n"
	    "      --key FILE          client key\n"
	    "      --server-name NAME  SNI and verification name\n"
	    "      --insecure          skip certificate verification\n"
	    "  -H, --header NAME:VALUE metadata (repeatable)\n"
	    "  -T, --timeout MS        deadline per call (default 10000, 0: none)\n"
	    "  -n, --count N           concurrent calls (default 1)\n"
	    "  -d, --data HEX          request bytes in hex\n"
	    "  -f, --file FILE         request bytes from a file\n"
	    "  -r, --repeat R          run the batch R times (default 1)\n"
	    "  -i, --interval MS       pause between batches (default 1000)\n"
	    "  -e, --expect CODE       exit 0 when every call ends with this code (default 0)\n"
	    "  -x, --hex               dump the response in hex\n"
	    "  -q, --quiet             only the summary (the default with -n > 1)\n");
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static uint8_t *
parse_hex(const char *s, size_t *len)
{
	size_t n = strlen(s), i;
	uint8_t *out;

	if (n % 2 != 0)
		return NULL;
	out = malloc(n / 2 + 1);
	if (out == NULL)
		return NULL;
	for (i = 0; i < n / 2; i++) {
		int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			free(out);
			return NULL;
		}
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	*len = n / 2;
	return out;
}

static uint8_t *
read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t cap = 0, n = 0, r;

	if (f == NULL)
		return NULL;
	do {
		if (n == cap) {
			uint8_t *nb;

			cap = cap > 0 ? cap * 2 : 4096;
			nb = realloc(buf, cap);

			if (nb == NULL) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		r = fread(buf + n, 1, cap - n, f);
		n += r;
	} while (r > 0);
	fclose(f);
	*len = n;
	return buf != NULL ? buf : malloc(1);
}

static void
on_done(void *arg, const struct tp_grpc_status *st, const uint8_t *msg, size_t len)
{
	struct tool *t = arg;
	size_t i;

	if (st->code >= 0 && st->code <= 16)
		t->counts[st->code]++;
	else
		t->other++;
	if (t->quiet && st->code != TP_GRPC_OK)
		printf("status: %s (%d): %s\n", tp_grpc_code_name(st->code), st->code, st->message);
	if (!t->quiet) {
		printf("status: %s (%d) after %lld ms\n", tp_grpc_code_name(st->code), st->code,
		    (long long)(tp_now_mono_ms() - t->started));
		if (st->message[0] != '\0')
			printf("message: %s\n", st->message);
		if (st->details != NULL)
			printf("details: %zu bytes\n", st->details_len);
		if (st->code == TP_GRPC_OK)
			printf("response: %zu bytes\n", len);
		for (i = 0; t->hex && i < len; i++)
			printf("%02x%s", msg[i], i + 1 == len || i % 32 == 31 ? "\n" : "");
	}
	if (--t->left > 0)
		return;
	if (t->rounds > 0) {
		struct timeval tv = { t->interval_ms / 1000, (t->interval_ms % 1000) * 1000 };

		evtimer_add(t->next_ev, &tv);
		return;
	}
	tp_grpc_channel_close(t->ch, NULL, NULL);
}

static int
start_batch(struct tool *t)
{
	long i;

	t->rounds--;
	t->left = t->ncalls;
	for (i = 0; i < t->ncalls; i++) {
		if (tp_grpc_call_start(t->ch, t->path, t->req, t->reqlen, t->timeout_ms, NULL, 0,
		    on_done, t) == NULL)
			return -1;
		t->total++;
	}
	return 0;
}

static void
on_next(evutil_socket_t fd, short what, void *arg)
{
	struct tool *t = arg;

	if (start_batch(t) != 0) {
		fprintf(stderr, "tp-grpc-call: out of memory\n");
		event_base_loopbreak(t->base);
	}
}

static int
split_hostport(char *hp, const char **host, const char **port)
{
	char *colon = strrchr(hp, ':');

	if (colon == NULL || colon == hp || colon[1] == '\0')
		return -1;
	*colon = '\0';
	*port = colon + 1;
	*host = hp;
	if (hp[0] == '[' && colon[-1] == ']') {    /* [v6]:port */
		colon[-1] = '\0';
		*host = hp + 1;
	}
	return 0;
}

static int
add_header(struct tp_grpc_header *h, size_t *n, char *arg)
{
	char *colon = strchr(arg, ':');

	if (colon == NULL || colon == arg || *n >= MAX_HEADERS)
		return -1;
	*colon = '\0';
	h[*n].name = arg;
	h[*n].value = colon + 1 + (colon[1] == ' ');
	(*n)++;
	return 0;
}

/* Everything the command line says. */
struct args {
	struct tp_grpc_channel_opts o;
	struct tp_grpc_header       hdrs[MAX_HEADERS];
	size_t                      nhdrs;
	uint8_t                    *req;
	size_t                      reqlen;
	long                        timeout;
	long                        expect;
};

static const struct option longopts[] = {
	{ "tls", no_argument, NULL, 's' },
	{ "ca", required_argument, NULL, 1 },
	{ "cert", required_argument, NULL, 2 },
	{ "key", required_argument, NULL, 3 },
	{ "server-name", required_argument, NULL, 4 },
	{ "insecure", no_argument, NULL, 5 },
	{ "header", required_argument, NULL, 'H' },
	{ "timeout", required_argument, NULL, 'T' },
	{ "count", required_argument, NULL, 'n' },
	{ "data", required_argument, NULL, 'd' },
	{ "file", required_argument, NULL, 'f' },
	{ "expect", required_argument, NULL, 'e' },
	{ "repeat", required_argument, NULL, 'r' },
	{ "interval", required_argument, NULL, 'i' },
	{ "hex", no_argument, NULL, 'x' },
	{ "quiet", no_argument, NULL, 'q' },
	{ NULL, 0, NULL, 0 },
};

/* The request body options. Returns 0 or -1 (message printed). */
static int
parse_body(struct args *a, int c, const char *arg)
{
	free(a->req);
	a->req = c == 'd' ? parse_hex(arg, &a->reqlen) : read_file(arg, &a->reqlen);
	if (a->req == NULL) {
		fprintf(stderr, "tp-grpc-call: %s %s\n", c == 'd' ? "bad hex data" : "cannot read", arg);
		return -1;
	}
	return 0;
}

/* One option. Returns 0, or -1 on a bad value. */
static int
parse_opt(struct args *a, struct tool *t, int c, char *arg)
{
	switch (c) {
	case 's': a->o.tls = true; return 0;
	case 1:   a->o.tls_ca_file = arg; a->o.tls = true; return 0;
	case 2:   a->o.tls_cert_file = arg; a->o.tls = true; return 0;
	case 3:   a->o.tls_key_file = arg; a->o.tls = true; return 0;
	case 4:   a->o.tls_server_name = arg; return 0;
	case 5:   a->o.tls_skip_verify = true; return 0;
	case 'x': t->hex = true; return 0;
	case 'q': t->quiet = true; return 0;
	case 'H': return add_header(a->hdrs, &a->nhdrs, arg);
	case 'T': return tp_parse_long(arg, 0, 86400000, &a->timeout);
	case 'n': return tp_parse_long(arg, 1, 100000, &t->ncalls);
	case 'r': return tp_parse_long(arg, 1, 1000000, &t->rounds);
	case 'i': return tp_parse_long(arg, 0, 3600000, &t->interval_ms);
	case 'e': return tp_parse_long(arg, 0, 16, &a->expect);
	case 'd':
	case 'f': return parse_body(a, c, arg);
	default:  return -1;
	}
}

static int
parse_args(int argc, char **argv, struct args *a, struct tool *t)
{
	int c;

	a->timeout = 10000;
	t->ncalls = 1;
	t->rounds = 1;
	t->interval_ms = 1000;
	while ((c = getopt_long(argc, argv, "sH:T:n:d:f:e:r:i:xq", longopts, NULL)) != -1)
		if (parse_opt(a, t, c, optarg) != 0)
			return -1;
	if (argc - optind != 2 || split_hostport(argv[optind], &a->o.host, &a->o.port) != 0)
		return -1;
	a->o.headers = a->hdrs;
	a->o.nheaders = a->nhdrs;
	t->path = argv[optind + 1];
	t->req = a->req;
	t->reqlen = a->reqlen;
	t->timeout_ms = a->timeout;
	if (t->ncalls > 1 || t->rounds > 1)
		t->quiet = true;
	return 0;
}

/* Run the batches; returns the exit status. */
static int
run(struct tool *t, const struct args *a)
{
	char err[512];
	int i, rc = 1;

	t->base = event_base_new();
	if (t->base == NULL)
		return 1;
	t->ch = tp_grpc_channel_new(t->base, &a->o, err, sizeof(err));
	t->next_ev = evtimer_new(t->base, on_next, t);
	t->started = tp_now_mono_ms();
	if (t->ch == NULL)
		fprintf(stderr, "tp-grpc-call: %s\n", err);
	else if (t->next_ev == NULL || start_batch(t) != 0)
		fprintf(stderr, "tp-grpc-call: out of memory\n");
	else
		event_base_dispatch(t->base);
	if (t->ch != NULL && t->quiet) {
		printf("%ld calls in %lld ms:", t->total, (long long)(tp_now_mono_ms() - t->started));
		for (i = 0; i <= 16; i++)
			if (t->counts[i] > 0)
				printf(" %s=%ld", tp_grpc_code_name(i), t->counts[i]);
		printf("\n");
	}
	if (t->ch != NULL && t->total > 0)
		rc = t->counts[a->expect] == t->total ? 0 : 1;
	if (t->next_ev != NULL)
		event_free(t->next_ev);
	tp_grpc_channel_free(t->ch);
	event_base_free(t->base);
	return rc;
}

int
main(int argc, char **argv)
{
	struct args a;
	struct tool t;
	struct sigaction sa;
	int rc;

	memset(&a, 0, sizeof(a));
	memset(&t, 0, sizeof(t));
	if (parse_args(argc, argv, &a, &t) != 0) {
		usage();
		free(a.req);
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	rc = run(&t, &a);
	free(a.req);
	return rc;
}
