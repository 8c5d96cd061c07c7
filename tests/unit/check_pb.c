/* Unit tests of tp_pb (payloads <-> JSON, failures) and of the error-details decoding in
 * tp_temporal (NOT_FOUND and NamespaceNotFound must differ). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "temporal/tp_pb.h"
#include "temporal/tp_temporal.h"

#include "google/rpc/status.pb-c.h"
#include "temporal/api/errordetails/v1/message.pb-c.h"
#include "temporal/api/workflowservice/v1/request_response.pb-c.h"

/* A payload with the given encoding and data, in a Payloads of n copies. */
static tp_payloads *
payloads_of(const char *const *encodings, const char *const *datas, size_t n)
{
	tp_payloads *ps = calloc(1, sizeof(*ps));

	temporal__api__common__v1__payloads__init(ps);
	ps->n_payloads = n;
	ps->payloads = calloc(n, sizeof(*ps->payloads));
	for (size_t i = 0; i < n; i++) {
		tp_payload *p = calloc(1, sizeof(*p));
		Temporal__Api__Common__V1__Payload__MetadataEntry *e = calloc(1, sizeof(*e));
		temporal__api__common__v1__payload__init(p);
		temporal__api__common__v1__payload__metadata_entry__init(e);
		e->key = strdup("encoding");
		e->value.data = (uint8_t *)strdup(encodings[i]);
		e->value.len = strlen(encodings[i]);
		p->n_metadata = 1;
		p->metadata = calloc(1, sizeof(*p->metadata));
		p->metadata[0] = e;
		p->data.data = (uint8_t *)strdup(datas[i]);
		p->data.len = strlen(datas[i]);
		ps->payloads[i] = p;
	}
	return ps;
}

START_TEST(input_json_plain_and_null)
{
	const char *enc[] = { "json/plain", "binary/null", "json/protobuf" };
	const char *dat[] = { "{\"a\": [1, 2]}", "", "{\"x\":1}" };
	tp_payloads *ps = payloads_of(enc, dat, 3);
	char *out, err[256];
	size_t len;

	ck_assert_int_eq(tp_pb_input_to_json(ps, &out, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(out, "[{\"a\": [1, 2]},null,{\"x\":1}]");
	ck_assert_uint_eq(len, strlen(out));
	free(out);
	tp_pb_payloads_free(ps);
	ck_assert_int_eq(tp_pb_input_to_json(NULL, &out, &len, err, sizeof(err)), 0);
	ck_assert_str_eq(out, "[]");
	free(out);
}
END_TEST

START_TEST(input_unsupported_or_invalid)
{
	const char *enc1[] = { "json/plain", "binary/plain" };
	const char *dat1[] = { "1", "\x01\x02" };
	const char *enc2[] = { "json/plain" };
	const char *dat2[] = { "{not json" };
	tp_payloads *ps = payloads_of(enc1, dat1, 2);
	char *out = NULL, err[256];
	size_t len;

	ck_assert_int_eq(tp_pb_input_to_json(ps, &out, &len, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "argument 2") && strstr(err, "binary/plain"), "%s", err);
	tp_pb_payloads_free(ps);
	ps = payloads_of(enc2, dat2, 1);
	ck_assert_int_eq(tp_pb_input_to_json(ps, &out, &len, err, sizeof(err)), -1);
	ck_assert_msg(strstr(err, "not valid JSON"), "%s", err);
	tp_pb_payloads_free(ps);
}
END_TEST

START_TEST(result_from_text)
{
	const char *text = "  {\"r\": 12345678901234567890}\n";
	char err[256], enc[64];
	tp_payloads *ps = tp_pb_payloads_from_json_text(text, strlen(text), err, sizeof(err));

	ck_assert_ptr_nonnull(ps);
	ck_assert_uint_eq(ps->n_payloads, 1);
	ck_assert_str_eq(tp_pb_encoding(ps->payloads[0], enc, sizeof(enc)), "json/plain");
	/* Verbatim (trimmed): a big integer is not rounded through a double. */
	ck_assert_uint_eq(ps->payloads[0]->data.len, 27);
	ck_assert(memcmp(ps->payloads[0]->data.data, "{\"r\": 12345678901234567890}", 27) == 0);
	tp_pb_payloads_free(ps);
	ck_assert_ptr_null(tp_pb_payloads_from_json_text("1 2", 3, err, sizeof(err)));
	ck_assert_msg(strstr(err, "not one JSON document"), "%s", err);
	ck_assert_ptr_null(tp_pb_payloads_from_json_text("", 0, err, sizeof(err)));
}
END_TEST

START_TEST(payloads_to_json_one_and_many)
{
	const char *enc[] = { "json/plain", "binary/plain" };
	const char *dat[] = { "{\"step\":3}", "raw" };
	tp_payloads *one = payloads_of(enc, dat, 1), *two = payloads_of(enc, dat, 2);
	char *s;

	s = tp_pb_payloads_to_json(one);
	ck_assert_str_eq(s, "{\"step\":3}");
	free(s);
	s = tp_pb_payloads_to_json(two);
	ck_assert_str_eq(s, "[{\"step\":3},null]");
	free(s);
	ck_assert_ptr_null(tp_pb_payloads_to_json(NULL));
	tp_pb_payloads_free(one);
	tp_pb_payloads_free(two);
}
END_TEST

START_TEST(app_failure_round_trip)
{
	json_t *details = json_pack("[i, s]", 1, "two");
	tp_failure *f = tp_pb_app_failure("BadInput", "no good", true, details);
	size_t len = temporal__api__failure__v1__failure__get_packed_size(f);
	uint8_t *buf = malloc(len);
	Temporal__Api__Failure__V1__Failure *back;

	temporal__api__failure__v1__failure__pack(f, buf);
	back = temporal__api__failure__v1__failure__unpack(NULL, len, buf);
	ck_assert_ptr_nonnull(back);
	ck_assert_str_eq(back->message, "no good");
	ck_assert_str_eq(back->source, TP_FAILURE_SOURCE);
	ck_assert_int_eq(back->failure_info_case,
	    TEMPORAL__API__FAILURE__V1__FAILURE__FAILURE_INFO_APPLICATION_FAILURE_INFO);
	ck_assert_str_eq(back->application_failure_info->type, "BadInput");
	ck_assert(back->application_failure_info->non_retryable);
	ck_assert_uint_eq(back->application_failure_info->details->n_payloads, 2);
	ck_assert(memcmp(back->application_failure_info->details->payloads[1]->data.data, "\"two\"", 5) == 0);
	temporal__api__failure__v1__failure__free_unpacked(back, NULL);
	free(buf);
	tp_pb_failure_free(f);
	json_decref(details);
}
END_TEST

/* A serialized google.rpc.Status carrying one Any of the given type and value. */
static uint8_t *
status_with(const char *type_url, const uint8_t *value, size_t vlen, size_t *len)
{
	Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	Google__Protobuf__Any *anys[1] = { &any };
	uint8_t *buf;

	any.type_url = (char *)type_url;
	any.value.data = (uint8_t *)value;
	any.value.len = vlen;
	st.code = 5;
	st.message = "x";
	st.n_details = 1;
	st.details = anys;
	*len = google__rpc__status__get_packed_size(&st);
	buf = malloc(*len);
	google__rpc__status__pack(&st, buf);
	return buf;
}

START_TEST(details_not_found_vs_namespace_not_found)
{
	size_t len;
	int cause;
	uint8_t *b;

	b = status_with("type.googleapis.com/temporal.api.errordetails.v1.NotFoundFailure", NULL, 0, &len);
	ck_assert_int_eq(tp_temporal_decode_details(b, len, &cause), TP_DETAIL_NOT_FOUND);
	free(b);
	b = status_with("type.googleapis.com/temporal.api.errordetails.v1.NamespaceNotFoundFailure", NULL, 0,
	    &len);
	ck_assert_int_eq(tp_temporal_decode_details(b, len, &cause), TP_DETAIL_NAMESPACE_NOT_FOUND);
	free(b);
	ck_assert_int_eq(tp_temporal_decode_details(NULL, 0, &cause), TP_DETAIL_NONE);
	ck_assert_int_eq(tp_temporal_decode_details((const uint8_t *)"\xff\xff", 2, &cause), TP_DETAIL_OTHER);
}
END_TEST

START_TEST(details_resource_exhausted_cause)
{
	Temporal__Api__Errordetails__V1__ResourceExhaustedFailure re =
	    TEMPORAL__API__ERRORDETAILS__V1__RESOURCE_EXHAUSTED_FAILURE__INIT;
	uint8_t v[16], *b;
	size_t vlen, len;
	int cause;

	re.cause = TEMPORAL__API__ENUMS__V1__RESOURCE_EXHAUSTED_CAUSE__RESOURCE_EXHAUSTED_CAUSE_RPS_LIMIT;
	vlen = temporal__api__errordetails__v1__resource_exhausted_failure__pack(&re, v);
	b = status_with("type.googleapis.com/temporal.api.errordetails.v1.ResourceExhaustedFailure", v, vlen,
	    &len);
	ck_assert_int_eq(tp_temporal_decode_details(b, len, &cause), TP_DETAIL_RESOURCE_EXHAUSTED);
	ck_assert_int_eq(cause, 1);
	free(b);
}
END_TEST

/* tp_pb_unpack: the whole message in an arena, equal to what was packed, however large its parts;
 * undecodable data gives NULL; tp_pb_free releases it all (the valgrind run checks for leaks). */
START_TEST(arena_unpack_round_trip)
{
	typedef Temporal__Api__Workflowservice__V1__PollActivityTaskQueueResponse resp_t;
	const ProtobufCMessageDescriptor *desc =
	    &temporal__api__workflowservice__v1__poll_activity_task_queue_response__descriptor;
	resp_t r = TEMPORAL__API__WORKFLOWSERVICE__V1__POLL_ACTIVITY_TASK_QUEUE_RESPONSE__INIT;
	Temporal__Api__Common__V1__ActivityType at = TEMPORAL__API__COMMON__V1__ACTIVITY_TYPE__INIT;
	size_t sizes[] = { 10, 5000, 100000 };  /* one block; a second; one larger than a block */

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		char *big = malloc(sizes[k] + 3);
		const char *enc[] = { "json/plain", "json/plain" };
		const char *dat[] = { "1", big };
		tp_payloads *ps;
		uint8_t token[200], *buf;
		size_t len;
		resp_t *u;

		big[0] = '"';
		memset(big + 1, 'x', sizes[k]);
		big[sizes[k] + 1] = '"';
		big[sizes[k] + 2] = '\0';
		ps = payloads_of(enc, dat, 2);
		for (size_t i = 0; i < sizeof(token); i++)
			token[i] = (uint8_t)i;
		r.task_token.data = token;
		r.task_token.len = sizeof(token);
		r.activity_id = "act-1";
		at.name = "Noop";
		r.activity_type = &at;
		r.input = ps;
		r.attempt = 3;
		len = protobuf_c_message_get_packed_size(&r.base);
		buf = malloc(len);
		protobuf_c_message_pack(&r.base, buf);

		u = (resp_t *)tp_pb_unpack(desc, len, buf);
		ck_assert_ptr_nonnull(u);
		ck_assert_uint_eq(u->task_token.len, sizeof(token));
		ck_assert_mem_eq(u->task_token.data, token, sizeof(token));
		ck_assert_str_eq(u->activity_id, "act-1");
		ck_assert_str_eq(u->activity_type->name, "Noop");
		ck_assert_int_eq(u->attempt, 3);
		ck_assert_uint_eq(u->input->n_payloads, 2);
		ck_assert_uint_eq(u->input->payloads[1]->data.len, sizes[k] + 2);
		ck_assert_mem_eq(u->input->payloads[1]->data.data, big, sizes[k] + 2);
		ck_assert_uint_eq(u->input->payloads[0]->n_metadata, 1);
		ck_assert_str_eq(u->input->payloads[0]->metadata[0]->key, "encoding");
		tp_pb_free(&u->base);

		/* cut short: not a message */
		ck_assert_ptr_null(tp_pb_unpack(desc, len - 1, buf));
		free(buf);
		tp_pb_payloads_free(ps);
		free(big);
	}
	tp_pb_free(NULL);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("pb");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, input_json_plain_and_null);
	tcase_add_test(tc, input_unsupported_or_invalid);
	tcase_add_test(tc, result_from_text);
	tcase_add_test(tc, payloads_to_json_one_and_many);
	tcase_add_test(tc, app_failure_round_trip);
	tcase_add_test(tc, details_not_found_vs_namespace_not_found);
	tcase_add_test(tc, details_resource_exhausted_cause);
	tcase_add_test(tc, arena_unpack_round_trip);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
