/* tp_channel: typed, length-checked messages between the master and a child over a socketpair.
 *
 * Frame: a 4-byte big-endian length, then one serialized tprefork.channel.v1.Envelope (protobuf-c
 * validates every field on unpack). A frame longer than TP_CHANNEL_MAX or one that does not unpack
 * is fatal for the receiver's view of that peer: the error callback runs and the channel stops
 * reading. The channel is the only thing master and worker share.
 * Lower layer: never logs. */
#ifndef TP_CHANNEL_H
#define TP_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "tprefork/channel/v1/channel.pb-c.h"

struct event_base;

typedef Tprefork__Channel__V1__Envelope tp_envelope;

#define TP_CHANNEL_MAX (16u * 1024 * 1024)

struct tp_channel;

/* msg: one received message (freed after the callback returns).
 * error: EOF (why = "closed") or a malformed frame; no further callbacks follow. It may free the
 * channel (tp_channel_free). */
struct tp_channel_callbacks {
	void (*msg)(void *arg, const tp_envelope *m);
	void (*error)(void *arg, const char *why);
	void  *arg;
};

/* Take over fd (non-blocking, close-on-exec); NULL on allocation failure. */
struct tp_channel *tp_channel_new(struct event_base *base, int fd,
    const struct tp_channel_callbacks *cb);
/* Queue a message; the messages of one loop turn are written together at its end. Returns 0, or -1
 * if it cannot be serialized or the channel has failed. */
int  tp_channel_send(struct tp_channel *ch, const tp_envelope *m);
/* Queue a message that may wait: it goes with the next tp_channel_send's write, or within_ms later
 * at the latest. Order is kept. */
int  tp_channel_send_lazy(struct tp_channel *ch, const tp_envelope *m, int within_ms);
/* Batch the reads: after a wake-up that found data, read again every ms (not on every message)
 * until a read finds nothing, then wake on the next byte again. A message waits at most ms; what a
 * peer wrote before it died is in the socket and read by tp_channel_read_now. 0: off (default). */
void tp_channel_batch_reads(struct tp_channel *ch, int ms);
/* Read what the peer has already written and deliver its complete messages now (before freeing
 * the channel of a peer that has exited, so that its last messages are not lost). */
void tp_channel_read_now(struct tp_channel *ch);
/* Bytes queued but not yet written. */
size_t tp_channel_pending(const struct tp_channel *ch);
/* Close the fd and free; NULL is accepted. Queued output is flushed best-effort first. */
void tp_channel_free(struct tp_channel *ch);

/* Blocking helpers for a child's start, before it has an event loop. */
int  tp_channel_write_sync(int fd, const tp_envelope *m);
/* Read one message within timeout_ms. Returns the message (free with
 * tprefork__channel__v1__envelope__free_unpacked) or NULL with why filled. */
tp_envelope *tp_channel_read_sync(int fd, int timeout_ms, char *why, size_t whylen);

/* Encode m as one frame (malloc'd). */
uint8_t *tp_channel_encode(const tp_envelope *m, size_t *len);

#endif
