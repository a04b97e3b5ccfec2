/* tandem serve + tandem worker as real processes on loopback, driven through the
 * public gRPC API: Generate and Think, 32 concurrent streams, cancellation and
 * Abort, hostile messages, a worker killed mid-request, the HTTP plane. */
#include "cluster.h"
#include "kernels/kern.h"

#include <pthread.h>

static const int32_t fx_prompt[] = {785, 3974, 13876, 38835, 34208};

/* The fixture's greedy continuation of fx_prompt (plain_tiny_s1.json, run A). */
static void fixture_greedy(int32_t *ids, int *n)
{
	json_t *fx = th_fixture("plain_tiny_s1.json");
	json_t *g = json_object_get(json_object_get(json_object_get(fx, "runs"), "A"), "greedy");
	json_t *arr = json_object_get(g, "ids");
	*n = (int)json_array_size(arr);
	for (int i = 0; i < *n; i++)
		ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
	json_decref(fx);
}

/* The single-process CLI's greedy continuation of fx_prompt (16 tokens) with more
 * flags (NULL-terminated, or NULL) must equal ids[n]. */
static void assert_cli_generates(const struct cluster *c, const char *const *flags,
				 const int32_t *ids, int n)
{
	char cmd[2400];
	int k = snprintf(cmd, sizeof(cmd),
			 "'%s' generate --model '%s' --tokens 785,3974,13876,38835,34208 "
			 "--max-tokens 16 --ids",
			 getenv("TANDEM_BIN"), c->model);
	for (int f = 0; flags && flags[f]; f++)
		k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, " %s", flags[f]);
	char *out;
	cr_assert_eq(th_capture(cmd, &out), 0, "%s", cmd);
	char *s = out;
	for (int i = 0; i < n; i++) {
		cr_assert_eq(strtol(s, &s, 10), ids[i], "token %d differs from the CLI", i);
		if (*s == ',')
			s++;
	}
	free(out);
}

Test(serve, generate_matches_cli_and_fixture, .timeout = 120)
{
	struct cluster c;
	cl_start(&c, 1, "srv-gen", "5000");
	struct cl_result *res = calloc(1, sizeof(*res));
	cl_generate(&c, fx_prompt, 5, 16, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert(res->done);
	cr_assert_eq(res->fin.finish_reason, tandem_v1_FinishReason_FINISH_LENGTH);
	cr_assert_eq(res->fin.usage.answer_tokens, 16);
	cr_assert_eq(res->fin.usage.prompt_tokens, 5);
	int32_t want[64];
	int n_want;
	fixture_greedy(want, &n_want);
	cr_assert_eq(res->n_answer, n_want);
	for (int i = 0; i < n_want; i++)
		cr_assert_eq(res->answer[i], want[i], "token %d", i);

	assert_cli_generates(&c, NULL, res->answer, res->n_answer); /* the same in one process */
	free(res);
	cl_stop(&c);
}

/* Workers take the engine's precision flags (--quantize q8, --activations bf16) and
 * serve what the CLI computes with the same flags; where the CPU has no
 * AVX512_BF16, a worker asked for bf16 activations stops with a clear error. */
Test(serve, workers_quantised_or_with_bf16_activations_match_the_cli, .timeout = 300)
{
	static const char *const q8[] = {"--quantize", "q8", NULL};
	static const char *const bf16[] = {"--activations", "bf16", NULL};
	static const char *const both[] = {"--activations", "bf16", "--quantize", "q8", NULL};
	const struct {
		const char *const *flags;
		bool bf16;
		const char *log; /* in the worker's log */
	} runs[] = {
		{q8, false, "(q8_0 weights)"}, {bf16, true, "bf16act"}, {both, true, "bf16act"}};
	const bool has_bf16 = kern_cpu_detect_isa() >= KERN_ISA_AVX512BF16;
	for (size_t r = 0; r < CM_ARRAY_LEN(runs); r++) {
		struct cluster c;
		if (runs[r].bf16 && !has_bf16) {
			char cmd[1200], *out;
			snprintf(cmd, sizeof(cmd),
				 "'%s' worker --coordinator tcp://127.0.0.1:1 --activations bf16 "
				 "2>&1",
				 getenv("TANDEM_BIN"));
			cr_assert_eq(th_capture(cmd, &out), 1);
			cr_assert(strstr(out, "needs AVX512_BF16"), "%s", out);
			free(out);
			continue;
		}
		cl_start_flags(&c, 1, "srv-prec", "5000", runs[r].flags);
		struct cl_result *res = calloc(1, sizeof(*res));
		cl_generate(&c, fx_prompt, 5, 16, res);
		cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
		cr_assert_eq(res->n_answer, 16);
		assert_cli_generates(&c, runs[r].flags, res->answer, res->n_answer);
		char log[1200];
		snprintf(log, sizeof(log), "%s/worker0-w0.log", c.dir);
		cl_stop(&c);
		cr_assert(th_file_has(log, runs[r].log), "run %zu: no '%s' in %s", r, runs[r].log,
			  log);
		free(res);
	}
}

Test(serve, think_streams_thoughts_before_the_input_ends, .timeout = 180)
{
	struct cluster c;
	cl_start(&c, 1, "srv-think", "5000");
	struct cm_err err = {0};
	struct cl_result *res = calloc(1, sizeof(*res));
	struct coord_call *k = coord_call_start(c.cli, COORD_METHOD_THINK, 120000000, &err);
	cr_assert_not_null(k);
	tandem_v1_ThinkRequest *m = cl_open_msg(64, false);
	snprintf(m->msg.open.request_id, sizeof(m->msg.open.request_id), "think-1");
	cl_send_think(k, m);
	free(m);
	/* one complete sentence (it becomes a unit once the next one starts) */
	cl_send_text(k, "The fox jumps over the dog. The");
	while (res->n_thought == 0)
		cr_assert(cl_next(k, res, 60000000), "call ended: %s", res->msg);
	cr_assert_eq(res->n_answer, 0);
	cr_assert_str_eq(res->request_id, "think-1");
	cl_send_text(k, " dog sleeps in the sun. Where does the fox go?");
	cl_send_close(k);
	cl_drain(k, res);
	coord_call_free(k);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert(res->done);
	const tandem_v1_Usage *u = &res->fin.usage;
	cr_assert_gt(u->input_tokens, 0);
	cr_assert_lt(res->fin.timings.input_tokens_waited, u->input_tokens,
		     "streaming thinks before all input arrived");
	cr_assert_eq(u->thought_tokens + u->answer_tokens, u->completion_tokens);
	cr_assert_eq(u->completion_tokens, res->n_thought + res->n_answer);
	cr_assert_leq(u->completion_tokens, 64);

	/* batch mode: the first thought waits for the whole input */
	const char *text[] = {"The fox jumps over the dog. ", "The dog sleeps in the sun. ",
			      "Where does the fox go?"};
	cl_think(&c, text, 3, 32, true, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert_gt(res->fin.usage.thought_tokens, 0);
	cr_assert_eq(res->fin.timings.input_tokens_waited, res->fin.usage.input_tokens);
	free(res);
	cl_stop(&c);
}

struct job {
	struct cluster *c;
	int i;
	struct cl_result res;
};

static void *run_job(void *arg)
{
	struct job *j = arg;
	if (j->i % 2) {
		const char *text[] = {"One sentence here. ", "Another one follows? ", "Done."};
		cl_think(j->c, text, 3, 12, false, &j->res);
	} else {
		int32_t ids[5];
		memcpy(ids, fx_prompt, sizeof(ids));
		ids[0] = 100 + j->i;
		cl_generate(j->c, ids, 5, 12, &j->res);
	}
	return NULL;
}

Test(serve, thirty_two_concurrent_streams, .timeout = 240)
{
	struct cluster c;
	cl_start(&c, 2, "srv-32", "5000");
	enum { N = 32 };
	struct job *jobs = calloc(N, sizeof(*jobs));
	pthread_t th[N];
	for (int i = 0; i < N; i++) {
		jobs[i].c = &c;
		jobs[i].i = i;
		cr_assert_eq(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(jobs[i].res.status, COORD_OK, "stream %d: %s", i, jobs[i].res.msg);
		cr_assert(jobs[i].res.done, "stream %d has no Done", i);
		cr_assert_eq(jobs[i].res.fin.usage.completion_tokens,
			     jobs[i].res.n_thought + jobs[i].res.n_answer);
	}
	free(jobs);
	cl_stop(&c);
}

/* Polls GetLoad until nothing runs anywhere (bounded). */
static bool all_idle(struct cluster *c)
{
	tandem_v1_Load *ld = malloc(sizeof(*ld));
	bool idle = false;
	for (int t = 0; t < 200 && !idle; t++) {
		cr_assert_eq(cl_load(c, ld), COORD_OK);
		idle = ld->requests_running == 0 && ld->requests_waiting == 0;
		for (pb_size_t i = 0; i < ld->workers_count; i++)
			idle = idle && ld->workers[i].running_sequences == 0 &&
			       ld->workers[i].queued_sequences == 0;
		if (!idle)
			usleep(50000);
	}
	free(ld);
	return idle;
}

Test(serve, cancelled_client_frees_its_sequence_and_abort_ends_a_request, .timeout = 180)
{
	struct cluster c;
	cl_start(&c, 1, "srv-cancel", "5000");
	struct cm_err err = {0};
	struct cl_result *res = calloc(1, sizeof(*res));

	/* a client that goes away mid-generation */
	tandem_v1_GenerateRequest *g = calloc(1, sizeof(*g));
	memcpy(g->token_ids, fx_prompt, sizeof(fx_prompt));
	g->token_ids_count = 5;
	g->max_tokens = 5000;
	uint8_t *buf = malloc(tandem_v1_GenerateRequest_size);
	size_t n =
		cl_encode(tandem_v1_GenerateRequest_fields, g, buf, tandem_v1_GenerateRequest_size);
	struct coord_call *k = coord_call_start(c.cli, COORD_METHOD_GENERATE, 0, &err);
	coord_call_send(k, buf, n);
	coord_call_close_send(k);
	while (res->n_answer == 0)
		cr_assert(cl_next(k, res, 60000000));
	coord_call_cancel(k);
	coord_call_free(k);
	cr_assert(all_idle(&c), "the cancelled request still runs");

	/* Abort by request id: the stream ends with Done(ABORT) */
	memset(res, 0, sizeof(*res));
	snprintf(g->request_id, sizeof(g->request_id), "gen-abort");
	n = cl_encode(tandem_v1_GenerateRequest_fields, g, buf, tandem_v1_GenerateRequest_size);
	k = coord_call_start(c.cli, COORD_METHOD_GENERATE, 120000000, &err);
	coord_call_send(k, buf, n);
	coord_call_close_send(k);
	while (res->n_answer == 0)
		cr_assert(cl_next(k, res, 60000000));
	tandem_v1_AbortRequest ab = tandem_v1_AbortRequest_init_zero;
	snprintf(ab.request_id, sizeof(ab.request_id), "gen-abort");
	tandem_v1_AbortResponse ar;
	cr_assert_eq(cl_unary(&c, COORD_METHOD_ABORT, tandem_v1_AbortRequest_fields, &ab,
			      tandem_v1_AbortResponse_fields, &ar),
		     COORD_OK);
	cl_drain(k, res);
	coord_call_free(k);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert(res->done);
	cr_assert_eq(res->fin.finish_reason, tandem_v1_FinishReason_FINISH_ABORT);
	snprintf(ab.request_id, sizeof(ab.request_id), "no-such-request");
	cr_assert_eq(cl_unary(&c, COORD_METHOD_ABORT, tandem_v1_AbortRequest_fields, &ab,
			      tandem_v1_AbortResponse_fields, &ar),
		     COORD_NOT_FOUND);

	/* a deadline that passes ends the call and frees the sequence */
	k = coord_call_start(c.cli, COORD_METHOD_GENERATE, 300000, &err);
	g->request_id[0] = 0;
	n = cl_encode(tandem_v1_GenerateRequest_fields, g, buf, tandem_v1_GenerateRequest_size);
	coord_call_send(k, buf, n);
	coord_call_close_send(k);
	memset(res, 0, sizeof(*res));
	cl_drain(k, res);
	coord_call_free(k);
	cr_assert_eq(res->status, COORD_DEADLINE_EXCEEDED, "%d %s", res->status, res->msg);
	cr_assert(all_idle(&c), "the expired request still runs");
	free(buf);
	free(g);
	free(res);
	cl_stop(&c);
}

/* Sends raw bytes as one Think message (after an optional Open) and returns the status. */
static int think_raw(struct cluster *c, bool open, const void *bytes, size_t n, char *msg)
{
	struct cm_err err = {0};
	struct coord_call *k = coord_call_start(c->cli, COORD_METHOD_THINK, 30000000, &err);
	if (open) {
		tandem_v1_ThinkRequest *m = cl_open_msg(8, false);
		cl_send_think(k, m);
		free(m);
	}
	coord_call_send(k, bytes, n);
	coord_call_close_send(k);
	struct cl_result *res = calloc(1, sizeof(*res));
	cl_drain(k, res);
	coord_call_free(k);
	int st = res->status;
	snprintf(msg, 256, "%s", res->msg);
	free(res);
	return st;
}

static size_t put_varint(uint8_t *p, size_t v)
{
	size_t n = 0;
	do {
		p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

Test(serve, hostile_messages_fail_their_stream_only, .timeout = 180)
{
	struct cluster c;
	cl_start(&c, 1, "srv-bad", "5000");
	char msg[256];
	uint8_t *buf = malloc(100000);
	tandem_v1_ThinkRequest *m = calloc(1, sizeof(*m));

	/* Input before Open */
	m->which_msg = tandem_v1_ThinkRequest_input_tag;
	snprintf(m->msg.input.text, sizeof(m->msg.input.text), "hello. ");
	size_t n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, false, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert(strstr(msg, "before Open"), "%s", msg);

	/* bytes that are no protobuf */
	memset(buf, 0xff, 64);
	cr_assert_eq(think_raw(&c, false, buf, 64, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert_eq(think_raw(&c, true, buf, 64, msg), COORD_INVALID_ARGUMENT, "%s", msg);

	/* invalid UTF-8 text */
	memset(m, 0, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_input_tag;
	memcpy(m->msg.input.text, "ok \xc3\x28 bad", 10);
	n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, true, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert(strstr(msg, "UTF-8"), "%s", msg);

	/* text over the 32 KiB bound, encoded by hand */
	size_t big = 40000, inner = 1 + put_varint(buf, big) + big;
	uint8_t *p = buf;
	*p++ = 0x12; /* ThinkRequest.input */
	p += put_varint(p, inner);
	*p++ = 0x0a; /* Input.text */
	p += put_varint(p, big);
	memset(p, 'a', big);
	p += big;
	cr_assert_eq(think_raw(&c, true, buf, (size_t)(p - buf), msg), COORD_INVALID_ARGUMENT, "%s",
		     msg);

	/* bad sampling values, unknown model, token ids out of range */
	memset(m, 0, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_open_tag;
	m->msg.open.has_sampling = true;
	m->msg.open.sampling.top_p = 2;
	n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, false, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert(strstr(msg, "top_p"), "%s", msg);
	memset(m, 0, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_open_tag;
	snprintf(m->msg.open.model, sizeof(m->msg.open.model), "gpt-9");
	n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, false, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	memset(m, 0, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_input_tag;
	m->msg.input.token_ids[0] = 1 << 30;
	m->msg.input.token_ids_count = 1;
	n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, true, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);

	/* Open twice; a stream closed before Open */
	memset(m, 0, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_open_tag;
	n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, 100000);
	cr_assert_eq(think_raw(&c, true, buf, n, msg), COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert_eq(think_raw(&c, false, buf, 0, msg), COORD_INVALID_ARGUMENT, "%s", msg);

	/* Generate: both prompt and ids; an unknown method */
	tandem_v1_GenerateRequest *g = calloc(1, sizeof(*g));
	snprintf(g->prompt, sizeof(g->prompt), "hi");
	g->token_ids_count = 1;
	n = cl_encode(tandem_v1_GenerateRequest_fields, g, buf, 100000);
	void *out;
	size_t len;
	cr_assert_eq(
		coord_unary(c.cli, COORD_METHOD_GENERATE, buf, n, 10000000, &out, &len, msg, 256),
		COORD_INVALID_ARGUMENT, "%s", msg);
	cr_assert_eq(coord_unary(c.cli, "/tandem.v1.Tandem/Nope", buf, n, 10000000, &out, &len, msg,
				 256),
		     COORD_UNIMPLEMENTED, "%s", msg);
	free(g);

	/* the server is unharmed */
	struct cl_result *res = calloc(1, sizeof(*res));
	cl_generate(&c, fx_prompt, 5, 4, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert_eq(res->n_answer, 4);
	tandem_v1_ModelInfoRequest mq = tandem_v1_ModelInfoRequest_init_zero;
	tandem_v1_ModelInfo mi;
	cr_assert_eq(cl_unary(&c, COORD_METHOD_MODEL_INFO, tandem_v1_ModelInfoRequest_fields, &mq,
			      tandem_v1_ModelInfo_fields, &mi),
		     COORD_OK);
	cr_assert_eq(mi.vocab_size, 151936);
	cr_assert_eq(mi.max_context, 40960);
	cr_assert_str_eq(mi.architecture, "Qwen3ForCausalLM");
	free(res);
	free(m);
	free(buf);
	cl_stop(&c);
}

/* Index of the worker (w0, w1, ...) that runs a request, or -1. */
static int busy_worker(struct cluster *c)
{
	tandem_v1_Load *ld = malloc(sizeof(*ld));
	int w = -1;
	cr_assert_eq(cl_load(c, ld), COORD_OK);
	for (pb_size_t i = 0; i < ld->workers_count; i++)
		if (ld->workers[i].requests > 0)
			w = atoi(ld->workers[i].worker_id + 1);
	free(ld);
	return w;
}

Test(serve, killed_worker_request_restarts_elsewhere, .timeout = 240)
{
	struct cluster c;
	cl_start(&c, 2, "srv-kill", "1000");
	struct cm_err err = {0};
	struct cl_result *res = calloc(1, sizeof(*res));
	tandem_v1_GenerateRequest *g = calloc(1, sizeof(*g));
	memcpy(g->token_ids, fx_prompt, sizeof(fx_prompt));
	g->token_ids_count = 5;
	g->max_tokens = 200;
	uint8_t *buf = malloc(tandem_v1_GenerateRequest_size);
	size_t n =
		cl_encode(tandem_v1_GenerateRequest_fields, g, buf, tandem_v1_GenerateRequest_size);

	struct coord_call *k = coord_call_start(c.cli, COORD_METHOD_GENERATE, 120000000, &err);
	coord_call_send(k, buf, n);
	coord_call_close_send(k);
	while (res->n_answer == 0)
		cr_assert(cl_next(k, res, 60000000));
	int w = busy_worker(&c);
	cr_assert(w == 0 || w == 1);
	kill(c.worker[w], SIGKILL);
	waitpid(c.worker[w], NULL, 0);
	c.worker[w] = 0;
	cl_drain(k, res);
	coord_call_free(k);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert_eq(res->restarts, 1);
	cr_assert(res->done);
	cr_assert_eq(res->n_answer, 200, "the restarted request runs to its end");
	int32_t want[64];
	int n_want;
	fixture_greedy(want, &n_want);
	for (int i = 0; i < n_want; i++)
		cr_assert_eq(res->answer[i], want[i], "token %d after the restart", i);

	/* the last worker dies too: UNAVAILABLE */
	memset(res, 0, sizeof(*res));
	k = coord_call_start(c.cli, COORD_METHOD_GENERATE, 120000000, &err);
	coord_call_send(k, buf, n);
	coord_call_close_send(k);
	while (res->n_answer == 0)
		cr_assert(cl_next(k, res, 60000000));
	cl_kill(&c.worker[1 - w], SIGKILL);
	cl_drain(k, res);
	coord_call_free(k);
	cr_assert_eq(res->status, COORD_UNAVAILABLE, "%d %s", res->status, res->msg);

	/* and a new request finds no worker */
	cl_generate(&c, fx_prompt, 5, 4, res);
	cr_assert_eq(res->status, COORD_UNAVAILABLE, "%s", res->msg);

	/* a worker that comes back is used again */
	cl_start_worker(&c, w);
	for (int i = 0; i < 600 && cl_ready_workers(&c) < 1; i++)
		usleep(100000);
	cl_generate(&c, fx_prompt, 5, 4, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	free(buf);
	free(g);
	free(res);
	cl_stop(&c);
}

/* Every line is a HELP, a TYPE or a sample of a family declared before it. */
static void check_exposition(const char *text)
{
	char *copy = strdup(text), *save = NULL;
	char family[128] = "";
	int samples = 0;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "# HELP ", 7)) {
			cr_assert_eq(sscanf(line + 7, "%127s", family), 1);
			cr_assert(!strncmp(family, "tandem_", 7), "%s", line);
			continue;
		}
		if (!strncmp(line, "# TYPE ", 7)) {
			char name[128], type[32];
			cr_assert_eq(sscanf(line + 7, "%127s %31s", name, type), 2);
			cr_assert_str_eq(name, family, "TYPE without HELP: %s", line);
			cr_assert(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
					  !strcmp(type, "histogram"),
				  "%s", line);
			if (!strcmp(type, "counter"))
				cr_assert(strstr(name, "_total"), "counter without _total: %s",
					  name);
			continue;
		}
		cr_assert(!strncmp(line, family, strlen(family)), "sample outside its family: %s",
			  line);
		char *sp = strrchr(line, ' ');
		cr_assert_not_null(sp, "%s", line);
		char *end;
		strtod(sp + 1, &end);
		cr_assert(*end == 0 && end != sp + 1, "bad value: %s", line);
		cr_assert(strstr(line, "model_name=\""), "%s", line);
		samples++;
	}
	cr_assert_gt(samples, 20);
	free(copy);
}

Test(serve, http_plane_health_readiness_and_metrics, .timeout = 120)
{
	struct cluster c;
	cl_start(&c, 1, "srv-http", "5000");
	char *body;
	cr_assert_eq(cl_http_get(c.http, "/healthz", &body), 200);
	free(body);
	cr_assert_eq(cl_http_get(c.http, "/readyz", &body), 200);
	free(body);
	cr_assert_eq(cl_http_get(c.http, "/nope", &body), 404);
	free(body);
	struct cl_result *res = calloc(1, sizeof(*res));
	cl_generate(&c, fx_prompt, 5, 8, res);
	cr_assert_eq(res->status, COORD_OK);
	const char *text[] = {"A first sentence. ", "A second one?"};
	cl_think(&c, text, 2, 16, false, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert_eq(cl_http_get(c.http, "/metrics", &body), 200);
	check_exposition(body);
	const char *names[] = {"tandem_time_to_first_token_seconds_count{model_name=\"",
			       "tandem_input_tokens_waited_bucket{",
			       "tandem_final_answer_latency_seconds_sum{",
			       "tandem_requests_running{",
			       "tandem_tokens_generated_total{model_name=\"",
			       "tandem_worker_kv_usage_ratio{model_name=\""};
	for (size_t i = 0; i < CM_ARRAY_LEN(names); i++)
		cr_assert(strstr(body, names[i]), "missing %s", names[i]);
	char *ttft = strstr(body, "tandem_time_to_first_token_seconds_count{");
	cr_assert_eq(atoi(strchr(ttft, '}') + 2), 2, "two requests were served");
	free(body);
	free(res);
	/* not ready without a worker */
	cl_kill(&c.worker[0], SIGKILL);
	int code = 200;
	for (int i = 0; i < 100 && code == 200; i++) {
		code = cl_http_get(c.http, "/readyz", &body);
		free(body);
		if (code == 200)
			usleep(50000);
	}
	cr_assert_eq(code, 503);
	cl_stop(&c);
}

/* Runs when node and @grpc/grpc-js + @grpc/proto-loader resolve (NODE_PATH may point
 * at them); skipped otherwise, so CI does not depend on npm. */
Test(serve, node_grpc_js_client_runs_think, .timeout = 120)
{
	if (th_sh("node -e \"require.resolve('@grpc/grpc-js'); "
		  "require.resolve('@grpc/proto-loader')\" >/dev/null 2>&1") != 0)
		cr_skip_test("node with @grpc/grpc-js and @grpc/proto-loader not found");
	struct cluster c;
	cl_start(&c, 1, "srv-node", "5000");
	char cmd[3000];
	const char *data = getenv("TANDEM_TEST_DATA");
	snprintf(cmd, sizeof(cmd),
		 "node '%s/../integration/node_think.js' %s '%s/../../proto/tandem.proto'", data,
		 c.addr, data);
	FILE *p = popen(cmd, "r");
	char line[4096] = {0};
	cr_assert(fgets(line, sizeof(line), p), "no output from node");
	pclose(p);
	json_error_t je;
	json_t *j = json_loads(line, 0, &je);
	cr_assert_not_null(j, "%s: %s", je.text, line);
	cr_assert_eq(json_integer_value(json_object_get(j, "status")), 0, "%s", line);
	cr_assert_str_eq(json_string_value(json_object_get(j, "request_id")), "node-1");
	const char *finish = json_string_value(json_object_get(j, "finish"));
	cr_assert(finish && !strncmp(finish, "FINISH_", 7), "%s", line);
	json_int_t thought = json_integer_value(json_object_get(j, "thought"));
	json_int_t answer = json_integer_value(json_object_get(j, "answer"));
	json_t *usage = json_object_get(j, "usage");
	cr_assert_gt(thought, 0, "%s", line);
	cr_assert_eq(thought + answer,
		     json_integer_value(json_object_get(usage, "completion_tokens")), "%s", line);
	cr_assert_leq(thought + answer, 24, "%s", line);
	json_decref(j);
	cl_stop(&c);
}

Test(serve, worker_registers_again_when_the_coordinator_restarts, .timeout = 120)
{
	struct cluster c;
	cl_start(&c, 1, "srv-restart", "5000");
	cl_kill(&c.serve, SIGTERM);
	coord_client_free(c.cli);
	char ports[1200], log[1200], wport[16];
	snprintf(ports, sizeof(ports), "%s/ports2", c.dir);
	snprintf(log, sizeof(log), "%s/serve2.log", c.dir);
	snprintf(wport, sizeof(wport), "%d", c.wport);
	char *argv[] = {getenv("TANDEM_BIN"),
			"serve",
			"--model",
			c.model,
			"--grpc-port",
			"0",
			"--http-port",
			"0",
			"--worker-port",
			wport,
			"--port-file",
			ports,
			NULL};
	c.serve = cl_spawn(argv, log);
	int g = 0, h, w;
	for (int i = 0; i < 3000 && !g; i++) {
		FILE *f = fopen(ports, "r");
		if (f) {
			if (fscanf(f, "grpc=%d\nhttp=%d\nworker=%d", &g, &h, &w) != 3)
				g = 0;
			fclose(f);
		}
		if (!g)
			usleep(10000);
	}
	cr_assert_gt(g, 0, "the coordinator did not restart (see %s)", log);
	snprintf(c.addr, sizeof(c.addr), "127.0.0.1:%d", g);
	struct cm_err err = {0};
	c.cli = coord_client_new(c.addr, &err);
	for (int i = 0; i < 300 && cl_ready_workers(&c) < 1; i++)
		usleep(100000);
	cr_assert_eq(cl_ready_workers(&c), 1, "the worker came back");
	struct cl_result *res = calloc(1, sizeof(*res));
	cl_generate(&c, fx_prompt, 5, 8, res);
	cr_assert_eq(res->status, COORD_OK, "%s", res->msg);
	cr_assert_eq(res->n_answer, 8);
	free(res);
	cl_stop(&c);
}
