/* tp-grpc-call: call one gRPC method (unary) and print the status.
 *
 *   tp-grpc-call [options] HOST:PORT /package.Service/Method
 *
 * The request is empty unless -d (hex) or -f (file) gives one. With -n N, N calls run
 * concurrently on the one channel and a summary per status code is printed. The channel is
 * closed gracefully at the end. Exit status: 0 when every call returned OK (or the code given
 * with -e), 1 otherwise, 2 on usage errors.
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
	    "  -e, --expect CODE       exit 0 when every call ends with this code (default 0)\n"
	    "  -x, --hex               dump the response in hex\n"
	    "  -q, --quiet             only the summary\n");
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
	if (--t->left == 0)
		tp_grpc_channel_close(t->ch, NULL, NULL);
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

int
main(int argc, char **argv)
{
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
		{ "hex", no_argument, NULL, 'x' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	struct tp_grpc_channel_opts o;
	struct tp_grpc_header hdrs[MAX_HEADERS];
	struct tool t;
	struct sigaction sa;
	uint8_t *req = NULL;
	size_t reqlen = 0, nhdrs = 0;
	long timeout = 10000, expect = 0, i;
	char err[512];
	int c, rc = 2;

	memset(&o, 0, sizeof(o));
	memset(&t, 0, sizeof(t));
	t.ncalls = 1;
	while ((c = getopt_long(argc, argv, "sH:T:n:d:f:e:xq", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o.tls = true; break;
		case 1: o.tls_ca_file = optarg; o.tls = true; break;
		case 2: o.tls_cert_file = optarg; o.tls = true; break;
		case 3: o.tls_key_file = optarg; o.tls = true; break;
		case 4: o.tls_server_name = optarg; break;
		case 5: o.tls_skip_verify = true; break;
		case 'H':
			if (add_header(hdrs, &nhdrs, optarg) != 0)
				goto bad_usage;
			break;
		case 'T':
			if (tp_parse_long(optarg, 0, 86400000, &timeout) != 0)
				goto bad_usage;
			break;
		case 'n':
			if (tp_parse_long(optarg, 1, 100000, &t.ncalls) != 0)
				goto bad_usage;
			break;
		case 'd':
			free(req);
			req = parse_hex(optarg, &reqlen);
			if (req == NULL)
				goto bad_usage;
			break;
		case 'f':
			free(req);
			req = read_file(optarg, &reqlen);
			if (req == NULL) {
				fprintf(stderr, "tp-grpc-call: cannot read %s\n", optarg);
				goto out;
			}
			break;
		case 'e':
			if (tp_parse_long(optarg, 0, 16, &expect) != 0)
				goto bad_usage;
			break;
		case 'x': t.hex = true; break;
		case 'q': t.quiet = true; break;
		default: goto bad_usage;
		}
	}
	if (argc - optind != 2 || split_hostport(argv[optind], &o.host, &o.port) != 0)
		goto bad_usage;
	o.headers = hdrs;
	o.nheaders = nhdrs;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	t.base = event_base_new();
	t.ch = tp_grpc_channel_new(t.base, &o, err, sizeof(err));
	if (t.ch == NULL) {
		fprintf(stderr, "tp-grpc-call: %s\n", err);
		rc = 1;
		goto out_base;
	}
	t.left = t.ncalls;
	t.started = tp_now_mono_ms();
	for (i = 0; i < t.ncalls; i++)
		if (tp_grpc_call_start(t.ch, argv[optind + 1], req, reqlen, timeout, NULL, 0, on_done,
		    &t) == NULL) {
			fprintf(stderr, "tp-grpc-call: out of memory\n");
			rc = 1;
			goto out_channel;
		}
	event_base_dispatch(t.base);
	if (t.ncalls > 1 || t.quiet) {
		printf("%ld calls in %lld ms:", t.ncalls, (long long)(tp_now_mono_ms() - t.started));
		for (i = 0; i <= 16; i++)
			if (t.counts[i] > 0)
				printf(" %s=%ld", tp_grpc_code_name((int)i), t.counts[i]);
		printf("\n");
	}
	rc = t.counts[expect] == t.ncalls ? 0 : 1;
out_channel:
	tp_grpc_channel_free(t.ch);
out_base:
	event_base_free(t.base);
out:
	free(req);
	return rc;
bad_usage:
	usage();
	free(req);
	return 2;
}
