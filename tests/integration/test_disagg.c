/* Disaggregation end to end (docs/disaggregation.md): a coordinator with encode
 * and decode workers as real processes on loopback, the source KV shipped over
 * the ZeroMQ KV link. Each test first runs the same Think request on a `both`
 * worker (the reference layout), then on the split layout, and compares every
 * event: greedy tokens, phases and units. Kills of the decode and of the encode
 * worker mid-request must end with the same tokens after one Restart event. */
#include "cluster.h"

#define TR_MAX 1024

/* Every token event of a call (after its last Restart), and how it ended. */
struct trace {
	int32_t tok[TR_MAX], unit[TR_MAX];
	bool answer[TR_MAX];
	int n, restarts, status;
	bool done;
	tandem_v1_Done fin;
	char msg[256];
};

/* Reads one event into t; false when the call is over. */
static bool tr_next(struct coord_call *k, struct trace *t)
{
	void *d;
	size_t len;
	int rc = coord_call_next(k, 60000000, &d, &len);
	if (rc == 0) {
		t->status = coord_call_status(k, t->msg, sizeof(t->msg));
		return false;
	}
	cr_assert_eq(rc, 1, "no event within 60 s");
	tandem_v1_ThinkEvent *ev = calloc(1, sizeof(*ev));
	pb_istream_t is = pb_istream_from_buffer(d, len);
	cr_assert(pb_decode(&is, tandem_v1_ThinkEvent_fields, ev));
	free(d);
	const tandem_v1_Thought *th = NULL;
	switch (ev->which_event) {
	case tandem_v1_ThinkEvent_thought_tag:
		th = &ev->event.thought;
		break;
	case tandem_v1_ThinkEvent_answer_tag:
		th = (const tandem_v1_Thought *)&ev->event.answer;
		break;
	case tandem_v1_ThinkEvent_restart_tag:
		t->restarts++;
		t->n = 0;
		break;
	case tandem_v1_ThinkEvent_done_tag:
		t->done = true;
		t->fin = ev->event.done;
		break;
	}
	for (pb_size_t i = 0; th && i < th->token_ids_count && t->n < TR_MAX; i++) {
		t->tok[t->n] = th->token_ids[i];
		t->unit[t->n] = th->unit;
		t->answer[t->n] = ev->which_event == tandem_v1_ThinkEvent_answer_tag;
		t->n++;
	}
	free(ev);
	return true;
}

static const char *const part1 = "The fox jumps over the dog. The";
static const char *const part2 = " dog sleeps in the sun. Then the fox runs home. Where does the fox go?";

/* Opens a Think call and sends the first part of the input. */
static struct coord_call *think_open(struct cluster *c, bool batch)
{
	struct cm_err err = {0};
	struct coord_call *k = coord_call_start(c->cli, COORD_METHOD_THINK, 120000000, &err);
	cr_assert_not_null(k, "%s", err.msg);
	tandem_v1_ThinkRequest *m = cl_open_msg(64, batch);
	cl_send_think(k, m);
	free(m);
	cl_send_text(k, part1);
	return k;
}

/* Sends the rest of the input, closes and reads every event. */
static void think_finish(struct coord_call *k, struct trace *t)
{
	cl_send_text(k, part2);
	cl_send_close(k);
	while (tr_next(k, t))
		;
	coord_call_free(k);
}

/* The whole request at once, into t. */
static void think(struct cluster *c, bool batch, struct trace *t)
{
	memset(t, 0, sizeof(*t));
	think_finish(think_open(c, batch), t);
	cr_assert_eq(t->status, COORD_OK, "%s", t->msg);
	cr_assert(t->done);
}

static void same_events(const struct trace *got, const struct trace *want)
{
	cr_assert_eq(got->n, want->n, "%d events, the both layout gave %d", got->n, want->n);
	for (int i = 0; i < want->n; i++) {
		cr_assert_eq(got->tok[i], want->tok[i], "token %d", i);
		cr_assert_eq(got->answer[i], want->answer[i], "phase of token %d", i);
		cr_assert_eq(got->unit[i], want->unit[i], "unit of token %d", i);
	}
	cr_assert_eq(got->fin.finish_reason, want->fin.finish_reason);
	cr_assert_eq(got->fin.usage.thought_tokens, want->fin.usage.thought_tokens);
	cr_assert_eq(got->fin.usage.answer_tokens, want->fin.usage.answer_tokens);
}

/* Starts the coordinator, runs the reference requests on one `both` worker,
 * then replaces it by the split workers given as "id:role" strings; the digit
 * of an id is its slot in c->worker (1..). */
static void setup(struct cluster *c, const char *tag, struct trace *ref, struct trace *ref_batch,
		  const char *const *workers, int n)
{
	/* ASan steps take up to ~1.5 s. Weights in the file mapping, as before workers
	 * copied them: with faster (copied) weights the restart test's premise, that the
	 * killed decode worker had received a unit when the first event arrived, failed
	 * in 1 of 3 release runs (a race in the test, noted on issue 4) */
	static const char *const mmap_flag[] = {"--mmap", NULL};
	cl_start_flags(c, 0, tag, "4000", mmap_flag);
	cl_start_role(c, 0, "b0", "both");
	cl_wait_ready(c, 1);
	think(c, false, ref);
	cr_assert_gt(ref->fin.usage.thought_tokens, 0);
	if (ref_batch)
		think(c, true, ref_batch);
	cl_kill(&c->worker[0], SIGKILL);
	cl_wait_ready(c, 0);
	for (int i = 0; i < n; i++) {
		char id[16], role[16];
		cr_assert_eq(sscanf(workers[i], "%15[^:]:%15s", id, role), 2);
		cl_start_role(c, atoi(id + 1), id, role);
	}
	cl_wait_ready(c, n);
}

/* ---- metrics ---------------------------------------------------------------- */

static char *metrics(struct cluster *c)
{
	char *body;
	cr_assert_eq(cl_http_get(c->http, "/metrics", &body), 200);
	return body;
}

/* The value of the sample of family name whose labels contain label, or -1. */
static double sample(const char *text, const char *name, const char *label)
{
	size_t n = strlen(name);
	for (const char *p = strstr(text, name); p; p = strstr(p + 1, name)) {
		if (p[n] != '{' || (p > text && p[-1] != '\n'))
			continue;
		const char *end = strchr(p, '}');
		if (!end)
			break;
		char labels[512];
		snprintf(labels, sizeof(labels), "%.*s", (int)(end - p), p);
		if (strstr(labels, label))
			return strtod(end + 1, NULL);
	}
	return -1;
}

/* Polls /metrics (5 s at most) until the encode worker enc has reported
 * prefilling as many tokens as the decode worker dec took from the KV link,
 * both non-zero; returns them in *prefilled and *sent (enc's KV link tokens). */
static void kv_figures(struct cluster *c, const char *enc, const char *dec, double *prefilled,
		       double *received, double *sent)
{
	char le[64], ld[64], ld_recv[160], le_sent[160];
	snprintf(le, sizeof(le), "worker=\"%s\"", enc);
	snprintf(ld, sizeof(ld), "worker=\"%s\"", dec);
	snprintf(ld_recv, sizeof(ld_recv), "%s,role=\"decode\",direction=\"received\"", ld);
	snprintf(le_sent, sizeof(le_sent), "%s,role=\"encode\",direction=\"sent\"", le);
	for (int i = 0; i < 50; i++) {
		char *m = metrics(c);
		*prefilled = sample(m, "tandem_worker_prefilled_tokens_total", le);
		*received = sample(m, "tandem_worker_kv_link_tokens_total", ld_recv);
		*sent = sample(m, "tandem_worker_kv_link_tokens_total", le_sent);
		free(m);
		if (*prefilled > 0 && *prefilled == *received)
			return;
		usleep(100000);
	}
}

/* Polls /metrics (5 s at most) until worker id reports an empty KV cache; its
 * last reported usage. */
static double kv_usage_settles(struct cluster *c, const char *id)
{
	char l[64];
	snprintf(l, sizeof(l), "worker=\"%s\"", id);
	double u = -1;
	for (int i = 0; i < 50 && u != 0; i++) {
		if (i)
			usleep(100000);
		char *m = metrics(c);
		u = sample(m, "tandem_worker_kv_usage_ratio", l);
		free(m);
	}
	return u;
}

/* Index (id's digit) of the worker of role with a request placed on it, or -1. */
static int busy(struct cluster *c, const char *role)
{
	tandem_v1_Load *ld = malloc(sizeof(*ld));
	int w = -1;
	cr_assert_eq(cl_load(c, ld), COORD_OK);
	for (pb_size_t i = 0; i < ld->workers_count; i++)
		if (ld->workers[i].requests > 0 && !strcmp(ld->workers[i].role, role))
			w = atoi(ld->workers[i].worker_id + 1);
	free(ld);
	return w;
}

/* ---- tests ------------------------------------------------------------------ */

Test(disagg, split_layout_gives_the_tokens_of_the_both_layout, .timeout = 180)
{
	struct cluster c;
	struct trace *ref = calloc(1, sizeof(*ref)), *ref_b = calloc(1, sizeof(*ref_b));
	struct trace *t = calloc(1, sizeof(*t));
	const char *const w[] = {"e1:encode", "d2:decode"};
	setup(&c, "dis-same", ref, ref_b, w, 2);

	think(&c, false, t);
	same_events(t, ref);
	cr_assert_eq(t->restarts, 0);
	double prefilled, received, sent;
	kv_figures(&c, "e1", "d2", &prefilled, &received, &sent);
	cr_assert_gt(prefilled, 0, "the encode worker encoded the source");
	cr_assert_eq(prefilled, received, "every encoded token reached the decode worker");
	cr_assert_eq(sent, prefilled, "each unit was shipped once");
	cr_assert_eq(kv_usage_settles(&c, "e1"), 0, "the encode worker freed the shard at the end");

	/* batch mode: the whole source first, same as on one worker */
	think(&c, true, t);
	same_events(t, ref_b);

	/* Generate runs whole on the decode worker */
	static const int32_t prompt[] = {785, 3974, 13876, 38835, 34208};
	struct cl_result *g = calloc(1, sizeof(*g));
	cl_generate(&c, prompt, 5, 8, g);
	cr_assert_eq(g->status, COORD_OK, "%s", g->msg);
	cr_assert_eq(g->n_answer, 8);
	free(g);
	free(ref);
	free(ref_b);
	free(t);
	cl_stop(&c);
}

Test(disagg, killed_decode_worker_continues_from_the_encode_workers_shard, .timeout = 240)
{
	struct cluster c;
	struct trace *ref = calloc(1, sizeof(*ref)), *t = calloc(1, sizeof(*t));
	const char *const w[] = {"e1:encode", "d2:decode", "d3:decode"};
	setup(&c, "dis-kill-d", ref, NULL, w, 3);

	struct coord_call *k = think_open(&c, false);
	while (t->n == 0)
		cr_assert(tr_next(k, t), "call ended: %s", t->msg);
	int d = busy(&c, "decode");
	cr_assert(d == 2 || d == 3, "a decode worker runs it (%d)", d);
	kill(c.worker[d], SIGKILL);
	waitpid(c.worker[d], NULL, 0);
	c.worker[d] = 0;
	think_finish(k, t);
	cr_assert_eq(t->status, COORD_OK, "%s", t->msg);
	cr_assert_eq(t->restarts, 1, "the client saw one Restart");
	same_events(t, ref);

	/* the survivor reasoned on the shard the encode worker kept: nothing was
	 * encoded twice, and the encode worker shipped it again */
	char other[16];
	snprintf(other, sizeof(other), "d%d", 5 - d);
	double prefilled, received, sent;
	kv_figures(&c, "e1", other, &prefilled, &received, &sent);
	cr_assert_gt(prefilled, 0);
	cr_assert_eq(prefilled, received, "encoded %g tokens, the new decode worker took %g",
		     prefilled, received);
	cr_assert_gt(sent, prefilled, "the kept units were shipped again");
	char *m = metrics(&c);
	cr_assert_eq(sample(m, "tandem_requests_retargeted_total", "model_name"), 1);
	free(m);
	free(ref);
	free(t);
	cl_stop(&c);
}

Test(disagg, killed_encode_worker_is_replaced_from_the_kept_input, .timeout = 240)
{
	struct cluster c;
	struct trace *ref = calloc(1, sizeof(*ref)), *t = calloc(1, sizeof(*t));
	const char *const w[] = {"e1:encode", "e2:encode", "d3:decode"};
	setup(&c, "dis-kill-e", ref, NULL, w, 3);

	struct coord_call *k = think_open(&c, false);
	while (t->n == 0)
		cr_assert(tr_next(k, t), "call ended: %s", t->msg);
	int e = busy(&c, "encode");
	cr_assert(e == 1 || e == 2, "an encode worker encodes it (%d)", e);
	kill(c.worker[e], SIGKILL);
	waitpid(c.worker[e], NULL, 0);
	c.worker[e] = 0;
	think_finish(k, t);
	cr_assert_eq(t->status, COORD_OK, "%s", t->msg);
	cr_assert_eq(t->restarts, 1, "the client saw one Restart");
	same_events(t, ref);

	/* the other encode worker encoded the whole input from the coordinator's copy */
	char other[16];
	snprintf(other, sizeof(other), "e%d", 3 - e);
	double prefilled, received, sent;
	kv_figures(&c, other, "d3", &prefilled, &received, &sent);
	cr_assert_gt(prefilled, 0, "the input was encoded again");
	cr_assert_eq(sent, prefilled);
	char *m = metrics(&c);
	cr_assert_eq(sample(m, "tandem_requests_replaced_total", "model_name"), 1);
	cr_assert_eq(sample(m, "tandem_requests_retargeted_total", "model_name"), 0);
	free(m);
	free(ref);
	free(t);
	cl_stop(&c);
}
