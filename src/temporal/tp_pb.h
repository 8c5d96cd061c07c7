/* tp_pb: conversions between Temporal payloads / failures and the JSON the handlers speak
 * (temporal-protocol.md §3). Lower layer: returns codes with a message, never logs.
 *
 * Input mapping (each argument payload -> one element of a JSON array):
 *   json/plain, json/protobuf  -> the payload's data verbatim (it is a JSON document)
 *   binary/null                -> null
 *   anything else              -> error (the caller fails the task as non-retryable
 *                                 "UnsupportedEncoding"; binary data has no JSON form)
 * Results are one json/plain payload; an absent result is no payload at all, never an empty
 * Payloads. */
#ifndef TP_PB_H
#define TP_PB_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "temporal/api/common/v1/message.pb-c.h"
#include "temporal/api/failure/v1/message.pb-c.h"

typedef Temporal__Api__Common__V1__Payloads tp_payloads;
typedef Temporal__Api__Common__V1__Payload  tp_payload;
typedef Temporal__Api__Failure__V1__Failure tp_failure;

#define TP_FAILURE_SOURCE "tprefork"

/* The encoding metadata of p as a NUL-terminated string in buf ("" when absent). */
const char *tp_pb_encoding(const tp_payload *p, char *buf, size_t buflen);

/* The activity input as one JSON array (malloc'd, NUL-terminated). NULL input -> "[]".
 * Returns 0, or -1 with err filled (unsupported encoding, invalid JSON data). */
int tp_pb_input_to_json(const tp_payloads *in, char **out, size_t *outlen, char *err, size_t errlen);

/* JSON text for a Payloads value (heartbeat details): one payload -> its JSON; several -> a JSON
 * array of them; none or NULL -> NULL. Payloads that cannot be expressed become null. */
char *tp_pb_payloads_to_json(const tp_payloads *p);

/* One json/plain payload holding text (which must be one JSON document; surrounding whitespace
 * is trimmed). Returns NULL with err filled when text is not JSON. */
tp_payloads *tp_pb_payloads_from_json_text(const char *text, size_t len, char *err, size_t errlen);
/* One json/plain payload holding v (compact encoding). v may be NULL: JSON null. */
tp_payloads *tp_pb_payloads_from_json(json_t *v);
/* Deep copy (NULL -> NULL). */
tp_payloads *tp_pb_payloads_dup(const tp_payloads *p);
void tp_pb_payloads_free(tp_payloads *p);

/* An ApplicationFailure: type, message, non_retryable and optional details (a JSON value; an
 * array becomes one payload per element, anything else one payload). */
tp_failure *tp_pb_app_failure(const char *type, const char *message, bool non_retryable,
    json_t *details);
void tp_pb_failure_free(tp_failure *f);

/* Unpack a message of desc into an arena: the message and everything it points to share a few
 * malloc'd blocks (one, for the usual response), released together by tp_pb_free, instead of one
 * malloc per field, string and payload freed one by one. NULL if data does not decode (or out of
 * memory). Free such a message with tp_pb_free only, never protobuf_c_message_free_unpacked. */
ProtobufCMessage *tp_pb_unpack(const ProtobufCMessageDescriptor *desc, size_t len,
    const uint8_t *data);
void tp_pb_free(ProtobufCMessage *m);

#endif
