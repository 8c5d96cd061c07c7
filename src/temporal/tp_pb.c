#include "temporal/tp_pb.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tp_buf.h"
#include "core/tp_mem.h"

#define ENC_KEY "encoding"

const char *
tp_pb_encoding(const tp_payload *p, char *buf, size_t buflen)
{
	buf[0] = '\0';
	for (size_t i = 0; i < p->n_metadata; i++) {
		const Temporal__Api__Common__V1__Payload__MetadataEntry *e = p->metadata[i];
		if (e->key && strcmp(e->key, ENC_KEY) == 0) {
			size_t n = e->value.len < buflen - 1 ? e->value.len : buflen - 1;
			memcpy(buf, e->value.data, n);
			buf[n] = '\0';
			break;
		}
	}
	return buf;
}

/* Append one payload's JSON form to b. Returns 0 or -1 with err. */
static int
append_payload_json(struct tp_buf *b, const tp_payload *p, size_t idx, char *err, size_t errlen)
{
	char enc[64];
	json_error_t jerr;
	json_t *check;

	tp_pb_encoding(p, enc, sizeof(enc));
	if (strcmp(enc, "binary/null") == 0)
		return tp_buf_append(b, "null", 4);
	if (strcmp(enc, "json/plain") != 0 && strcmp(enc, "json/protobuf") != 0) {
		snprintf(err, errlen, "argument %zu has encoding \"%s\", which has no JSON form "
		    "(supported: json/plain, json/protobuf, binary/null)", idx + 1, enc);
		return -1;
	}
	/* Only validated (the bytes go through verbatim): integers beyond 64 bits are valid JSON. */
	check = json_loadb((const char *)p->data.data, p->data.len,
	    JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
	if (check == NULL) {
		snprintf(err, errlen, "argument %zu is not valid JSON: %s", idx + 1, jerr.text);
		return -1;
	}
	json_decref(check);
	return tp_buf_append(b, p->data.data, p->data.len);
}

int
tp_pb_input_to_json(const tp_payloads *in, char **out, size_t *outlen, char *err, size_t errlen)
{
	struct tp_buf b = TP_BUF_INIT(0);
	size_t n = in ? in->n_payloads : 0;

	tp_buf_append(&b, "[", 1);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			tp_buf_append(&b, ",", 1);
		if (append_payload_json(&b, in->payloads[i], i, err, errlen) != 0) {
			tp_buf_free(&b);
			return -1;
		}
	}
	tp_buf_append(&b, "]", 1);
	*out = (char *)tp_buf_steal(&b, outlen);
	return 0;
}

char *
tp_pb_payloads_to_json(const tp_payloads *p)
{
	struct tp_buf b = TP_BUF_INIT(0);
	char err[256];

	if (p == NULL || p->n_payloads == 0)
		return NULL;
	if (p->n_payloads > 1)
		tp_buf_append(&b, "[", 1);
	for (size_t i = 0; i < p->n_payloads; i++) {
		if (i > 0)
			tp_buf_append(&b, ",", 1);
		if (append_payload_json(&b, p->payloads[i], i, err, sizeof(err)) != 0)
			tp_buf_append(&b, "null", 4);
	}
	if (p->n_payloads > 1)
		tp_buf_append(&b, "]", 1);
	return (char *)tp_buf_steal(&b, NULL);
}

static tp_payload *
payload_new(const void *data, size_t len, const char *encoding)
{
	tp_payload *p = tp_xmalloc(sizeof(*p));
	Temporal__Api__Common__V1__Payload__MetadataEntry *e = tp_xmalloc(sizeof(*e));

	temporal__api__common__v1__payload__init(p);
	temporal__api__common__v1__payload__metadata_entry__init(e);
	e->key = tp_xstrdup(ENC_KEY);
	e->value.len = strlen(encoding);
	e->value.data = (uint8_t *)tp_xstrdup(encoding);
	p->n_metadata = 1;
	p->metadata = tp_xmalloc(sizeof(*p->metadata));
	p->metadata[0] = e;
	p->data.len = len;
	p->data.data = tp_xmalloc(len ? len : 1);
	if (len)
		memcpy(p->data.data, data, len);
	return p;
}

static tp_payloads *
payloads_new(size_t n)
{
	tp_payloads *ps = tp_xmalloc(sizeof(*ps));

	temporal__api__common__v1__payloads__init(ps);
	ps->n_payloads = n;
	ps->payloads = tp_xcalloc(n ? n : 1, sizeof(*ps->payloads));
	return ps;
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

tp_payloads *
tp_pb_payloads_from_json_text(const char *text, size_t len, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *check;
	tp_payloads *ps;

	while (len > 0 && is_space(*text)) {
		text++;
		len--;
	}
	while (len > 0 && is_space(text[len - 1]))
		len--;
	check = json_loadb(text, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
	if (check == NULL) {
		snprintf(err, errlen, "not one JSON document: %s (line %d, column %d)", jerr.text,
		    jerr.line, jerr.column);
		return NULL;
	}
	json_decref(check);
	ps = payloads_new(1);
	ps->payloads[0] = payload_new(text, len, "json/plain");
	return ps;
}

tp_payloads *
tp_pb_payloads_from_json(json_t *v)
{
	char *s = json_dumps(v ? v : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
	tp_payloads *ps = payloads_new(1);

	if (s == NULL)
		s = tp_xstrdup("null");
	ps->payloads[0] = payload_new(s, strlen(s), "json/plain");
	free(s);
	return ps;
}

tp_payloads *
tp_pb_payloads_dup(const tp_payloads *p)
{
	tp_payloads *copy;

	if (p == NULL)
		return NULL;
	copy = payloads_new(p->n_payloads);
	for (size_t i = 0; i < p->n_payloads; i++) {
		const tp_payload *src = p->payloads[i];
		char enc[128];
		copy->payloads[i] = payload_new(src->data.data, src->data.len,
		    tp_pb_encoding(src, enc, sizeof(enc)));
	}
	return copy;
}

static void
payload_free(tp_payload *p)
{
	for (size_t i = 0; i < p->n_metadata; i++) {
		free(p->metadata[i]->key);
		free(p->metadata[i]->value.data);
		free(p->metadata[i]);
	}
	free(p->metadata);
	free(p->data.data);
	free(p);
}

void
tp_pb_payloads_free(tp_payloads *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n_payloads; i++)
		payload_free(p->payloads[i]);
	free(p->payloads);
	free(p);
}

static tp_payloads *
details_payloads(json_t *details)
{
	tp_payloads *ps;

	if (details == NULL)
		return NULL;
	if (!json_is_array(details))
		return tp_pb_payloads_from_json(details);
	ps = payloads_new(json_array_size(details));
	for (size_t i = 0; i < json_array_size(details); i++) {
		char *s = json_dumps(json_array_get(details, i), JSON_COMPACT | JSON_ENCODE_ANY);
		ps->payloads[i] = payload_new(s ? s : "null", s ? strlen(s) : 4, "json/plain");
		free(s);
	}
	return ps;
}

tp_failure *
tp_pb_app_failure(const char *type, const char *message, bool non_retryable, json_t *details)
{
	tp_failure *f = tp_xmalloc(sizeof(*f));
	Temporal__Api__Failure__V1__ApplicationFailureInfo *ai = tp_xmalloc(sizeof(*ai));

	temporal__api__failure__v1__failure__init(f);
	temporal__api__failure__v1__application_failure_info__init(ai);
	f->message = tp_xstrdup(message ? message : "");
	f->source = tp_xstrdup(TP_FAILURE_SOURCE);
	ai->type = tp_xstrdup(type ? type : "");
	ai->non_retryable = non_retryable;
	ai->details = details_payloads(details);
	f->failure_info_case = TEMPORAL__API__FAILURE__V1__FAILURE__FAILURE_INFO_APPLICATION_FAILURE_INFO;
	f->application_failure_info = ai;
	return f;
}

void
tp_pb_failure_free(tp_failure *f)
{
	if (f == NULL)
		return;
	if (f->failure_info_case ==
	    TEMPORAL__API__FAILURE__V1__FAILURE__FAILURE_INFO_APPLICATION_FAILURE_INFO) {
		tp_pb_payloads_free(f->application_failure_info->details);
		free(f->application_failure_info->type);
		free(f->application_failure_info);
	}
	free(f->message);
	free(f->source);
	free(f);
}

/* ---- arena unpacking ---------------------------------------------------------------------------- */

/* A block: the header, then the allocations, each aligned for any type. The first block holds the
 * arena itself right after its header, and the message right after the arena (protobuf-c's first
 * allocation is the message), which is how tp_pb_free finds the arena from the message. */
struct arena_block {
	struct arena_block *next;
	size_t              cap, used;
	alignas(max_align_t) unsigned char data[];
};

struct arena {
	ProtobufCAllocator  a;       /* allocator_data points back here */
	struct arena_block *blocks;  /* newest first; the last one holds this arena */
};

#define ARENA_ALIGN     alignof(max_align_t)
#define ARENA_ROUND(n)  (((n) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))
#define ARENA_BLOCK     4096   /* a poll response with small inputs fits in one */
#define ARENA_SELF      ARENA_ROUND(sizeof(struct arena))

static struct arena_block *
arena_block_new(size_t need)
{
	size_t cap = need > ARENA_BLOCK - sizeof(struct arena_block) ?
	    need : ARENA_BLOCK - sizeof(struct arena_block);
	struct arena_block *b = malloc(sizeof(*b) + cap);

	if (b != NULL) {
		b->next = NULL;
		b->cap = cap;
		b->used = 0;
	}
	return b;
}

static void *
arena_alloc(void *data, size_t size)
{
	struct arena *ar = data;
	struct arena_block *b = ar->blocks;
	size_t n = ARENA_ROUND(size ? size : 1);
	void *p;

	if (n < size)
		return NULL;
	if (b->cap - b->used < n) {
		b = arena_block_new(n);
		if (b == NULL)
			return NULL;
		b->next = ar->blocks;
		ar->blocks = b;
	}
	p = b->data + b->used;
	b->used += n;
	return p;
}

static void
arena_release(void *data, void *p)
{
	/* Nothing one by one: tp_pb_free releases the blocks. */
}

static void
arena_destroy(struct arena *ar)
{
	struct arena_block *b = ar->blocks, *next;

	for (; b != NULL; b = next) {
		next = b->next;
		free(b);  /* the last block holds ar itself */
	}
}

ProtobufCMessage *
tp_pb_unpack(const ProtobufCMessageDescriptor *desc, size_t len, const uint8_t *data)
{
	struct arena_block *first = arena_block_new(ARENA_SELF + ARENA_ROUND(desc->sizeof_message));
	struct arena *ar;
	ProtobufCMessage *m;

	if (first == NULL)
		return NULL;
	ar = (struct arena *)(void *)first->data;
	first->used = ARENA_SELF;
	ar->a.alloc = arena_alloc;
	ar->a.free = arena_release;
	ar->a.allocator_data = ar;
	ar->blocks = first;
	m = protobuf_c_message_unpack(desc, &ar->a, len, data);
	if (m != NULL && (unsigned char *)m != first->data + ARENA_SELF) {
		/* Not where tp_pb_free will look: a protobuf-c that allocates otherwise. */
		m = NULL;
	}
	if (m == NULL)
		arena_destroy(ar);
	return m;
}

void
tp_pb_free(ProtobufCMessage *m)
{
	if (m != NULL)
		arena_destroy((struct arena *)(void *)((unsigned char *)m - ARENA_SELF));
}
