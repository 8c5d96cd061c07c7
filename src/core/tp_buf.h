/* tp_buf: a growable byte buffer with an optional size cap (curl's dynbuf idea).
 * The data is always NUL-terminated (not counted in len) so text can be used in place. */
#ifndef TP_BUF_H
#define TP_BUF_H

#include <stddef.h>
#include <stdint.h>

struct tp_buf {
	uint8_t *data;   /* owned; NULL until the first append */
	size_t   len;    /* bytes used */
	size_t   cap;    /* bytes allocated (excluding the NUL byte) */
	size_t   max;    /* 0: unlimited; otherwise appends beyond it fail */
};

#define TP_BUF_INIT(maxlen) { NULL, 0, 0, (maxlen) }

/* Append n bytes. Returns 0, or -1 when the cap would be exceeded (the buffer is unchanged)
 * or memory is exhausted. */
int  tp_buf_append(struct tp_buf *b, const void *p, size_t n);
/* Remove the first n bytes (n <= len). */
void tp_buf_consume(struct tp_buf *b, size_t n);
void tp_buf_reset(struct tp_buf *b);
/* Free the storage; the buffer can be reused. */
void tp_buf_free(struct tp_buf *b);
/* Hand the storage to the caller (NUL-terminated; never NULL); the buffer is left empty. */
uint8_t *tp_buf_steal(struct tp_buf *b, size_t *len);

#endif
