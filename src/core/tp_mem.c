#include "core/tp_mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
oom(size_t n)
{
	/* Cannot allocate a log line either: write(2) a fixed message and abort. */
	static const char msg[] = "tprefork: fatal: out of memory\n";
	(void)n;
	(void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
	abort();
}

void *
tp_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		oom(n);
	return p;
}

void *
tp_xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (p == NULL)
		oom(nmemb * size);
	return p;
}

void *
tp_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (q == NULL)
		oom(n);
	return q;
}

char *
tp_xstrdup(const char *s)
{
	return tp_xstrndup(s, strlen(s));
}

char *
tp_xstrndup(const char *s, size_t n)
{
	char *p = tp_xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
tp_xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom(0);
	return s;
}
