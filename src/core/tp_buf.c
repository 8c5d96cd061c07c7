#include "core/tp_buf.h"

#include <stdlib.h>
#include <string.h>

int
tp_buf_append(struct tp_buf *b, const void *p, size_t n)
{
	if (b->max && (n > b->max || b->len > b->max - n))
		return -1;
	if (b->len + n > b->cap || b->data == NULL) {
		size_t ncap = b->cap ? b->cap : 256;
		while (ncap < b->len + n)
			ncap *= 2;
		uint8_t *d = realloc(b->data, ncap + 1);
		if (d == NULL)
			return -1;
		b->data = d;
		b->cap = ncap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

void
tp_buf_consume(struct tp_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
	} else {
		memmove(b->data, b->data + n, b->len - n);
		b->len -= n;
	}
	if (b->data)
		b->data[b->len] = '\0';
}

void
tp_buf_reset(struct tp_buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

void
tp_buf_free(struct tp_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

uint8_t *
tp_buf_steal(struct tp_buf *b, size_t *len)
{
	uint8_t *d = b->data;
	if (d == NULL) {
		d = calloc(1, 1);
		if (d == NULL)
			abort();
	}
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return d;
}
