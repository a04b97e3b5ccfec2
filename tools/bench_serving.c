/* tandem bench serving: a load generator against a running cluster's public gRPC
 * API (`tandem up`, or `tandem serve` and its workers), for latency under load.
 *
 * --concurrency streams run at once until --requests Think calls are done; each
 * stream takes the next request, streams one workload's text at --read-rate
 * tokens per second (the text of every token that has "arrived" goes out at once,
 * so a slow reader sends about one token per message), closes the input and reads
 * the events to the end. Workloads are the bundled bench/streaming/ *.txt (or
 * --input FILE), in an order shuffled by --seed; sampling is greedy unless
 * --temperature says otherwise (request i then samples with seed --seed + i).
 *
 * Token counts and arrival times come from the served model's tokenizer: --model
 * DIR, else the model folder the server reports (GetModelInfo), which works for
 * any cluster on this machine. The same tokenizer and segmenter count the
 * request's units, so that max_tokens can be exactly the budgets it needs (the
 * engine reserves KV for max_tokens at admission).
 *
 * Measured per request, all on the client's clock (docs/performance.md):
 *   ttft: the first Input sent -> the first thought token received (the first
 *     token of any kind when a request has no thought);
 *   itl: gaps between consecutive token events of a stream, except a gap to a
 *     new unit that began before the input closed (the engine may have waited
 *     for the reader there: reading time, not serving latency); itl_all keeps
 *     every gap;
 *   first_answer / final_answer: the input close -> the first / the last answer
 *     token (the end of the call when no answer token came);
 *   e2el: the first Input -> the end of the call.
 * Reported: mean, p50, p90, p99 of each over the requests that succeeded, output
 * tokens per second over the whole run, errors (status not OK, or no Done).
 */
#include "coordinator/coord.h"
#include "model/md.h"
#include "proto/tandem.pb.h"
#include "tools.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BSV_UNIT_BUDGET	  16 /* the flags' 0, as in bench streaming */
#define BSV_FINAL_BUDGET  64
#define BSV_MAX_WORKLOADS 256
#define BSV_RPC_US	  5000000

struct bsv_work {
	char *name;
	char *text;
	size_t len;
	size_t *cut; /* [n_tok + 1] byte offset where token i starts */
	size_t n_tok;
	int32_t n_units; /* units the segmenter makes, the instruction included */
};

struct bsv_samples {
	double *v; /* ms */
	size_t n, cap;
};

/* One request, written by the one stream that runs it. Times in µs. */
struct bsv_req {
	int work;
	int status;
	char msg[160];
	bool done;
	int restarts;
	const char *finish;
	int64_t t_first_input, t_close, t_end;
	int64_t t_first_thought, t_first_token, t_first_answer, t_last_answer, t_last_token;
	int32_t last_unit;
	int32_t thought, answer, input_tokens, waited;
	struct bsv_samples itl, gaps;
};

struct bsv {
	const struct tandem_opts *o;
	struct coord_client *cli;
	struct md_tok *tok;
	struct bsv_work works[BSV_MAX_WORKLOADS];
	int n_works;
	struct bsv_req *reqs; /* [n_reqs] */
	int n_reqs;
	atomic_int next;
	int32_t unit_budget, final_budget;
	int64_t t0, t1;
	tandem_v1_ModelInfo info;
	tandem_v1_Load load;
};

/* One stream's buffers and the call it runs. */
struct bsv_stream {
	struct bsv *b;
	struct bsv_req *r;
	const struct bsv_work *w;
	struct coord_call *call;
	tandem_v1_ThinkRequest *msg;
	tandem_v1_ThinkEvent *ev;
	uint8_t *buf; /* [tandem_v1_ThinkRequest_size] */
	bool over;
};

static void samples_add(struct bsv_samples *s, double v)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		double *p = realloc(s->v, cap * sizeof(double));
		if (!p)
			return; /* a sample fewer; the run goes on */
		s->v = p;
		s->cap = cap;
	}
	s->v[s->n++] = v;
}

/* ---- workloads ------------------------------------------------------------- */

static void count_unit(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	(void)index;
	(void)ids;
	(void)n;
	((struct bsv_work *)ud)->n_units++;
}

/* Tokenizes w->text: the byte offset of each token (proportional where NFC
 * changed the text), and the units the segmenter makes of it. */
static int work_tokenize(struct bsv *b, struct bsv_work *w, struct cm_err *err)
{
	int32_t *ids = NULL;
	int rc = md_tok_encode(b->tok, w->text, w->len, &ids, &w->n_tok, err);
	if (rc == CM_OK && w->n_tok == 0)
		rc = cm_err_set(err, CM_EINVAL, "%s: empty input", w->name);
	if (rc == CM_OK && !(w->cut = malloc((w->n_tok + 1) * sizeof(size_t))))
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
	if (rc < 0)
		goto out;
	size_t at = 0;
	bool exact = true;
	for (size_t i = 0; i < w->n_tok; i++) {
		size_t n = 0;
		const char *p = md_tok_bytes(b->tok, ids[i], &n);
		w->cut[i] = at;
		exact = exact && p && at + n <= w->len && !memcmp(w->text + at, p, n);
		at += n;
	}
	for (size_t i = 0; !exact && i < w->n_tok; i++)
		w->cut[i] = w->len * i / w->n_tok;
	w->cut[w->n_tok] = w->len;
	struct md_seg_template t;
	if ((rc = tool_think_template(b->o, &t, err)) < 0)
		goto out;
	struct md_seg *seg = md_seg_new(b->tok, &t, err);
	rc = seg ? md_seg_push(seg, "", 0, count_unit, w, err) : err->code;
	if (rc == CM_OK)
		rc = md_seg_push(seg, w->text, w->len, count_unit, w, err);
	if (rc == CM_OK)
		rc = md_seg_close(seg, count_unit, w, err);
	md_seg_free(seg);
	md_seg_template_fini(&t);
out:
	free(ids);
	return rc;
}

static int work_load(struct bsv *b, const char *path, struct cm_err *err)
{
	if (b->n_works == BSV_MAX_WORKLOADS)
		return cm_err_set(err, CM_EINVAL, "more than %d workloads", BSV_MAX_WORKLOADS);
	struct bsv_work *w = &b->works[b->n_works++];
	const char *slash = strrchr(path, '/');
	if (!(w->name = strdup(slash ? slash + 1 : path)))
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	int rc = cm_file_read(path, &w->text, &w->len, err);
	if (rc == CM_OK && md_utf8_valid_prefix(w->text, w->len) != w->len)
		rc = cm_err_set(err, CM_EUTF8, "%s: not valid UTF-8", path);
	return rc < 0 ? rc : work_tokenize(b, w, err);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* --input, or every bench/streaming/ *.txt in name order. */
static int work_load_all(struct bsv *b, struct cm_err *err)
{
	if (b->o->input)
		return work_load(b, b->o->input, err);
	const char *dir = TANDEM_BENCH_STREAMING_DIR;
	DIR *d = opendir(dir);
	if (!d)
		return cm_err_set(err, CM_ENOENT, "%s: no bundled workloads (give --input FILE)",
				  dir);
	char *names[BSV_MAX_WORKLOADS];
	int n = 0, rc = CM_OK;
	struct dirent *de;
	while ((de = readdir(d)) && n < BSV_MAX_WORKLOADS) {
		size_t l = strlen(de->d_name);
		if (l > 4 && !strcmp(de->d_name + l - 4, ".txt") &&
		    asprintf(&names[n], "%s/%s", dir, de->d_name) >= 0)
			n++;
	}
	closedir(d);
	qsort(names, (size_t)n, sizeof(char *), cmp_str);
	for (int i = 0; i < n; i++) {
		if (rc == CM_OK)
			rc = work_load(b, names[i], err);
		free(names[i]);
	}
	if (rc == CM_OK && !n)
		rc = cm_err_set(err, CM_ENOENT, "%s: no .txt workloads", dir);
	return rc;
}

static void work_free(struct bsv_work *w)
{
	free(w->name);
	free(w->text);
	free(w->cut);
}

/* Request i's workload: each round of n_works requests is a seeded shuffle of
 * all of them, so every mix is balanced and the order repeats with the seed. */
static void work_assign(struct bsv *b)
{
	uint64_t x = (uint64_t)b->o->seed * 0x9E3779B97F4A7C15ull + 1;
	int perm[BSV_MAX_WORKLOADS];
	for (int i = 0; i < b->n_reqs; i++) {
		int k = i % b->n_works;
		if (k == 0) {
			for (int j = 0; j < b->n_works; j++)
				perm[j] = j;
			for (int j = b->n_works - 1; j > 0; j--) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				int m = (int)(x % (uint64_t)(j + 1)), t = perm[j];
				perm[j] = perm[m];
				perm[m] = t;
			}
		}
		b->reqs[i].work = perm[k];
	}
}

/* ---- one stream ------------------------------------------------------------ */

static int send_msg(struct bsv_stream *s)
{
	pb_ostream_t os = pb_ostream_from_buffer(s->buf, tandem_v1_ThinkRequest_size);
	if (!pb_encode(&os, tandem_v1_ThinkRequest_fields, s->msg))
		return CM_EINTERNAL;
	return coord_call_send(s->call, s->buf, os.bytes_written);
}

static int send_open(struct bsv_stream *s, int i)
{
	const struct tandem_opts *o = s->b->o;
	memset(s->msg, 0, sizeof(*s->msg));
	s->msg->which_msg = tandem_v1_ThinkRequest_open_tag;
	tandem_v1_Open *op = &s->msg->msg.open;
	op->mode = !strcmp(o->mode, "batch") ? tandem_v1_Mode_MODE_BATCH
					     : tandem_v1_Mode_MODE_STREAMING;
	op->depth = (int32_t)o->depth;
	op->unit_budget = s->b->unit_budget;
	op->final_budget = s->b->final_budget;
	int64_t need = (int64_t)s->w->n_units * s->b->unit_budget + s->b->final_budget + 16;
	op->max_tokens =
		(int32_t)(o->think_max_tokens ? o->think_max_tokens : CM_MIN(need, 1 << 20));
	op->has_sampling = true;
	op->sampling.temperature = (float)o->temperature;
	op->sampling.seed = (uint64_t)o->seed + (uint64_t)i;
	snprintf(op->request_id, sizeof(op->request_id), "bench-%lld-%d", (long long)o->seed, i);
	return send_msg(s);
}

/* Sends text[from, to) as Input messages, cut at UTF-8 character starts. */
static int send_text(struct bsv_stream *s, size_t from, size_t to)
{
	const char *text = s->w->text;
	const size_t max = sizeof(s->msg->msg.input.text) - 1;
	while (from < to) {
		size_t n = CM_MIN(to - from, max);
		while (from + n < to && n > 0 && ((unsigned char)text[from + n] & 0xC0) == 0x80)
			n--;
		memset(s->msg, 0, sizeof(s->msg->which_msg) + sizeof(s->msg->msg.input));
		s->msg->which_msg = tandem_v1_ThinkRequest_input_tag;
		memcpy(s->msg->msg.input.text, text + from, n);
		int rc = send_msg(s);
		if (rc < 0)
			return rc;
		from += n;
	}
	return CM_OK;
}

static void on_token(struct bsv_stream *s, bool thought, int32_t unit, int n)
{
	struct bsv_req *r = s->r;
	int64_t now = cm_time_us();
	if (r->t_last_token) {
		double gap = (double)(now - r->t_last_token) * 1e-3;
		bool reading =
			unit != r->last_unit && (!r->t_close || r->t_last_token < r->t_close);
		samples_add(&r->gaps, gap);
		if (!reading)
			samples_add(&r->itl, gap);
	}
	r->t_last_token = now;
	r->last_unit = unit;
	if (!r->t_first_token)
		r->t_first_token = now;
	if (thought) {
		if (!r->t_first_thought)
			r->t_first_thought = now;
		r->thought += n;
	} else {
		if (!r->t_first_answer)
			r->t_first_answer = now;
		r->t_last_answer = now;
		r->answer += n;
	}
}

static const char *finish_name(tandem_v1_FinishReason f)
{
	static const char *const names[] = {"unspecified", "stop",  "length", "eos",
					    "stop_string", "abort", "context"};
	return (size_t)f < CM_ARRAY_LEN(names) ? names[f] : "unknown";
}

static void on_event(void *ud, const uint8_t *data, size_t len)
{
	struct bsv_stream *s = ud;
	struct bsv_req *r = s->r;
	tandem_v1_ThinkEvent *ev = s->ev;
	memset(ev, 0, sizeof(*ev));
	pb_istream_t is = pb_istream_from_buffer(data, len);
	if (!pb_decode(&is, tandem_v1_ThinkEvent_fields, ev)) {
		snprintf(r->msg, sizeof(r->msg), "bad event (%s)", PB_GET_ERROR(&is));
		coord_call_cancel(s->call);
		return;
	}
	switch (ev->which_event) {
	case tandem_v1_ThinkEvent_thought_tag:
		return on_token(s, true, ev->event.thought.unit,
				(int)ev->event.thought.token_ids_count);
	case tandem_v1_ThinkEvent_answer_tag:
		return on_token(s, false, ev->event.answer.unit,
				(int)ev->event.answer.token_ids_count);
	case tandem_v1_ThinkEvent_restart_tag:
		/* output after a restart replaces what came before */
		r->restarts++;
		r->thought = r->answer = 0;
		r->t_first_answer = r->t_last_answer = 0;
		return;
	case tandem_v1_ThinkEvent_done_tag:
		r->done = true;
		r->finish = finish_name(ev->event.done.finish_reason);
		r->input_tokens = ev->event.done.usage.input_tokens;
		r->waited = ev->event.done.timings.input_tokens_waited;
		return;
	}
}

/* Reads events for wait_us (< 0: until the call ends); false once it ended. */
static bool pump(struct bsv_stream *s, int64_t wait_us)
{
	if (s->over)
		return false;
	if (coord_call_pump(s->call, wait_us, on_event, s) != 0)
		return true; /* the wait is over */
	s->r->t_end = cm_time_us();
	char msg[sizeof(s->r->msg)];
	s->r->status = coord_call_status(s->call, msg, sizeof(msg));
	if (!s->r->msg[0]) /* a message of ours comes first */
		snprintf(s->r->msg, sizeof(s->r->msg), "%s", msg);
	s->over = true;
	return false;
}

/* Token j of the workload arrives j / rate seconds after the first. */
static void stream_input(struct bsv_stream *s)
{
	struct bsv_req *r = s->r;
	const double rate = s->b->o->read_rate;
	const size_t n = s->w->n_tok;
	int64_t t0 = cm_time_us();
	size_t due = 0, at = 0; /* tokens arrived; bytes sent */
	while (due < n) {
		double secs = (double)(cm_time_us() - t0) * 1e-6;
		due = (size_t)CM_MIN((double)n, floor(secs * rate) + 1);
		size_t to = s->w->cut[due];
		while (due < n && to > at && ((unsigned char)s->w->text[to] & 0xC0) == 0x80)
			to--; /* a token that ends inside a character waits for the rest */
		if (to > at) {
			if (!r->t_first_input)
				r->t_first_input = cm_time_us();
			if (send_text(s, at, to) < 0)
				return;
			at = to;
		}
		if (due == n)
			break;
		int64_t next = t0 + (int64_t)ceil((double)due / rate * 1e6);
		if (!pump(s, CM_MAX(next - cm_time_us(), 0)))
			return;
	}
	memset(s->msg, 0, sizeof(s->msg->which_msg));
	s->msg->which_msg = tandem_v1_ThinkRequest_close_tag;
	if (send_msg(s) == CM_OK && coord_call_close_send(s->call) == CM_OK)
		r->t_close = cm_time_us();
}

static void run_one(struct bsv_stream *s, int i)
{
	struct cm_err err = {0};
	const struct tandem_opts *o = s->b->o;
	s->r = &s->b->reqs[i];
	s->w = &s->b->works[s->r->work];
	s->r->status = COORD_UNKNOWN;
	s->r->last_unit = -1;
	s->over = false;
	s->call = coord_call_start(s->b->cli, COORD_METHOD_THINK,
				   o->timeout > 0 ? (int64_t)(o->timeout * 1e6) : 0, &err);
	if (!s->call) {
		snprintf(s->r->msg, sizeof(s->r->msg), "%.150s", err.msg);
		return;
	}
	if (send_open(s, i) == CM_OK)
		stream_input(s);
	if (!s->over)
		pump(s, -1);
	coord_call_free(s->call);
	s->call = NULL;
}

/* A stream: takes requests off the shared counter until there are none left. */
static void stream_main(void *ctx, int ith, int nth)
{
	(void)ith;
	(void)nth;
	struct bsv_stream s = {.b = ctx};
	s.msg = malloc(sizeof(*s.msg));
	s.ev = malloc(sizeof(*s.ev));
	s.buf = malloc(tandem_v1_ThinkRequest_size);
	for (int i; (i = atomic_fetch_add(&s.b->next, 1)) < s.b->n_reqs;) {
		if (!s.msg || !s.ev || !s.buf)
			snprintf(s.b->reqs[i].msg, sizeof(s.b->reqs[i].msg), "out of memory");
		else
			run_one(&s, i);
	}
	free(s.msg);
	free(s.ev);
	free(s.buf);
}

/* ---- the cluster ------------------------------------------------------------- */

static int unary(struct bsv *b, const char *method, const pb_msgdesc_t *req_d, const void *req,
		 const pb_msgdesc_t *resp_d, void *resp, char *msg, size_t cap)
{
	uint8_t buf[64];
	pb_ostream_t os = pb_ostream_from_buffer(buf, sizeof(buf));
	if (!pb_encode(&os, req_d, req))
		return CM_EINTERNAL;
	void *out;
	size_t len;
	int st = coord_unary(b->cli, method, buf, os.bytes_written, BSV_RPC_US, &out, &len, msg,
			     cap);
	if (st != COORD_OK)
		return st;
	pb_istream_t is = pb_istream_from_buffer(out, len);
	bool ok = pb_decode(&is, resp_d, resp);
	free(out);
	if (!ok)
		snprintf(msg, cap, "bad reply (%s)", PB_GET_ERROR(&is));
	return ok ? COORD_OK : COORD_INTERNAL;
}

/* Waits until the server answers and a worker is ready; keeps ModelInfo and Load. */
static int cluster_wait(struct bsv *b, struct cm_err *err)
{
	tandem_v1_ModelInfoRequest mq = tandem_v1_ModelInfoRequest_init_zero;
	tandem_v1_LoadRequest lq = tandem_v1_LoadRequest_init_zero;
	char msg[256] = "";
	int64_t until = cm_time_us() + b->o->start_timeout * 1000000;
	for (;;) {
		int st = unary(b, COORD_METHOD_MODEL_INFO, tandem_v1_ModelInfoRequest_fields, &mq,
			       tandem_v1_ModelInfo_fields, &b->info, msg, sizeof(msg));
		if (st == COORD_OK) {
			memset(&b->load, 0, sizeof(b->load));
			st = unary(b, COORD_METHOD_LOAD, tandem_v1_LoadRequest_fields, &lq,
				   tandem_v1_Load_fields, &b->load, msg, sizeof(msg));
		}
		for (pb_size_t i = 0; st == COORD_OK && i < b->load.workers_count; i++)
			if (b->load.workers[i].kv_blocks_total > 0)
				return CM_OK;
		if (st == COORD_OK)
			snprintf(msg, sizeof(msg), "no worker is ready");
		if (cm_time_us() > until)
			return cm_err_set(err, CM_EPEER, "%s: %s (%s) after %d s", b->o->target,
					  st < 0 ? cm_err_str(st) : coord_status_name(st), msg,
					  (int)b->o->start_timeout);
		usleep(200000);
	}
}

/* The tokenizer of --model, else of the folder the server serves. */
static int load_tokenizer(struct bsv *b, struct cm_err *err)
{
	const char *dir = b->o->model ? b->o->model : b->info.model_path;
	b->tok = md_tok_load(dir, err);
	if (b->tok)
		return CM_OK;
	return cm_err_set(err, err->code,
			  "%s (give --model DIR, a folder with the served model's "
			  "tokenizer.json)",
			  err->msg);
}

/* ---- statistics and output ------------------------------------------------------ */

struct bsv_stat {
	double mean, p50, p90, p99;
	size_t n;
};

/* Linear interpolation between closest ranks (numpy's default, as vLLM). */
static double pct(const double *v, size_t n, double p)
{
	double x = p / 100.0 * (double)(n - 1);
	size_t lo = (size_t)floor(x), hi = CM_MIN(lo + 1, n - 1);
	return v[lo] + (v[hi] - v[lo]) * (x - (double)lo);
}

static struct bsv_stat stat_of(struct bsv_samples *s)
{
	struct bsv_stat st = {.n = s->n};
	if (!s->n)
		return st;
	cm_sort_doubles(s->v, s->n);
	for (size_t i = 0; i < s->n; i++)
		st.mean += s->v[i] / (double)s->n;
	st.p50 = pct(s->v, s->n, 50);
	st.p90 = pct(s->v, s->n, 90);
	st.p99 = pct(s->v, s->n, 99);
	return st;
}

static bool req_ok(const struct bsv_req *r)
{
	return r->status == COORD_OK && r->done;
}

static double ms(int64_t from, int64_t to)
{
	return (double)(to - from) * 1e-3;
}

enum { M_TTFT, M_ITL, M_ITL_ALL, M_FIRST_ANSWER, M_FINAL_ANSWER, M_E2EL, M_WAITED, M_COUNT };

static const char *const metric_key[M_COUNT] = {
	"ttft_ms",	   "itl_ms",  "itl_all_ms",	    "first_answer_ms",
	"final_answer_ms", "e2el_ms", "input_tokens_waited"};
static const char *const metric_label[M_COUNT] = {
	"time to first thought (ms)", "inter-token latency (ms)",   "  every gap, reading too",
	"close -> first answer (ms)", "close -> final answer (ms)", "end to end (ms)",
	"input tokens waited"};

/* A request's time to its first thought (first token when it had none). */
static int64_t first_thought(const struct bsv_req *r)
{
	return r->t_first_thought ? r->t_first_thought : r->t_first_token;
}

/* When the final answer was complete: its last token, else the end of the call. */
static int64_t final_answer(const struct bsv_req *r)
{
	return r->t_last_answer ? r->t_last_answer : r->t_end;
}

/* The samples of every metric over the requests that succeeded. */
static void collect(struct bsv *b, struct bsv_samples *m)
{
	for (int i = 0; i < b->n_reqs; i++) {
		struct bsv_req *r = &b->reqs[i];
		if (!req_ok(r))
			continue;
		if (first_thought(r))
			samples_add(&m[M_TTFT], ms(r->t_first_input, first_thought(r)));
		for (size_t k = 0; k < r->itl.n; k++)
			samples_add(&m[M_ITL], r->itl.v[k]);
		for (size_t k = 0; k < r->gaps.n; k++)
			samples_add(&m[M_ITL_ALL], r->gaps.v[k]);
		if (r->t_first_answer && r->t_close)
			samples_add(&m[M_FIRST_ANSWER], ms(r->t_close, r->t_first_answer));
		if (r->t_close)
			samples_add(&m[M_FINAL_ANSWER], ms(r->t_close, final_answer(r)));
		samples_add(&m[M_E2EL], ms(r->t_first_input, r->t_end));
		samples_add(&m[M_WAITED], r->waited);
	}
}

/* Totals over the run. */
struct bsv_totals {
	int completed, errors, restarts;
	int64_t input, thought, answer;
	double duration;
	const char *first_error;
};

static struct bsv_totals totals(const struct bsv *b)
{
	struct bsv_totals t = {.duration = (double)(b->t1 - b->t0) * 1e-6};
	for (int i = 0; i < b->n_reqs; i++) {
		const struct bsv_req *r = &b->reqs[i];
		t.restarts += r->restarts;
		if (!req_ok(r)) {
			t.errors++;
			if (!t.first_error)
				t.first_error = r->msg[0] ? r->msg : "no Done event";
			continue;
		}
		t.completed++;
		t.input += r->input_tokens;
		t.thought += r->thought;
		t.answer += r->answer;
	}
	return t;
}

static const char *layout(const struct bsv *b)
{
	for (pb_size_t i = 0; i < b->load.workers_count; i++)
		if (strcmp(b->load.workers[i].role, "both"))
			return "disaggregated";
	return "colocated";
}

static json_t *req_json(const struct bsv *b, const struct bsv_req *r)
{
	json_t *j = json_pack("{s:s, s:i, s:s, s:s, s:i, s:i, s:i, s:i, s:i}", "workload",
			      b->works[r->work].name, "units", b->works[r->work].n_units - 1,
			      "status", coord_status_name(r->status), "finish",
			      r->finish ? r->finish : "none", "input_tokens", r->input_tokens,
			      "input_tokens_waited", r->waited, "thought_tokens", r->thought,
			      "answer_tokens", r->answer, "restarts", r->restarts);
	if (!req_ok(r)) {
		json_object_set_new(j, "error", json_string(r->msg));
		return j;
	}
	struct bsv_samples itl = {.v = r->itl.v, .n = r->itl.n};
	struct bsv_stat s = stat_of(&itl); /* sorts the request's own gaps in place */
	json_object_set_new(j, "ttft_ms", json_real(ms(r->t_first_input, first_thought(r))));
	if (r->t_close && r->t_first_answer) /* the request may end before its input */
		json_object_set_new(j, "first_answer_ms",
				    json_real(ms(r->t_close, r->t_first_answer)));
	if (r->t_close)
		json_object_set_new(j, "final_answer_ms",
				    json_real(ms(r->t_close, final_answer(r))));
	json_object_set_new(j, "e2el_ms", json_real(ms(r->t_first_input, r->t_end)));
	json_object_set_new(j, "itl_ms_p50", json_real(s.p50));
	json_object_set_new(j, "itl_ms_p99", json_real(s.p99));
	return j;
}

static json_t *workers_json(const struct bsv *b)
{
	json_t *a = json_array();
	for (pb_size_t i = 0; i < b->load.workers_count; i++)
		json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "worker_id",
						   b->load.workers[i].worker_id, "role",
						   b->load.workers[i].role, "device",
						   b->load.workers[i].device));
	return a;
}

static void print_json(struct bsv *b, const struct bsv_totals *t, const struct bsv_stat *st)
{
	const struct tandem_opts *o = b->o;
	json_t *j = json_pack(
		"{s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:i, s:i, s:f, s:s, s:I, s:i, s:i, s:i}",
		"mode", "serving", "target", o->target, "model_name", b->info.model_name,
		"architecture", b->info.architecture, "layout", layout(b), "workers",
		workers_json(b), "request_mode", o->mode, "requests", b->n_reqs, "concurrency",
		(int)CM_MIN(o->concurrency, b->n_reqs), "read_rate_tok_s", o->read_rate, "sampling",
		o->temperature > 0 ? "sampled" : "greedy", "seed", (json_int_t)o->seed,
		"unit_budget", b->unit_budget, "final_budget", b->final_budget, "depth",
		(int)o->depth);
	json_object_set_new(j, "temperature", json_real(o->temperature));
	json_object_set_new(j, "completed", json_integer(t->completed));
	json_object_set_new(j, "errors", json_integer(t->errors));
	json_object_set_new(j, "restarts", json_integer(t->restarts));
	json_object_set_new(j, "duration_s", json_real(t->duration));
	json_object_set_new(j, "total_input_tokens", json_integer(t->input));
	json_object_set_new(j, "total_thought_tokens", json_integer(t->thought));
	json_object_set_new(j, "total_answer_tokens", json_integer(t->answer));
	json_object_set_new(j, "total_output_tokens", json_integer(t->thought + t->answer));
	double d = CM_MAX(t->duration, 1e-9);
	json_object_set_new(j, "request_throughput", json_real(t->completed / d));
	json_object_set_new(j, "output_tok_s", json_real((double)(t->thought + t->answer) / d));
	json_object_set_new(j, "input_tok_s", json_real((double)t->input / d));
	for (int m = 0; m < M_COUNT; m++) {
		const char *sfx[] = {"mean", "p50", "p90", "p99"};
		const double v[] = {st[m].mean, st[m].p50, st[m].p90, st[m].p99};
		for (int k = 0; k < 4; k++) {
			char key[64];
			snprintf(key, sizeof(key), "%s_%s", metric_key[m], sfx[k]);
			json_object_set_new(j, key, json_real(v[k]));
		}
	}
	json_t *rs = json_array();
	for (int i = 0; i < b->n_reqs; i++)
		json_array_append_new(rs, req_json(b, &b->reqs[i]));
	json_object_set_new(j, "per_request", rs);
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
	if (s)
		puts(s);
	free(s);
	json_decref(j);
}

static void print_text(const struct bsv *b, const struct bsv_totals *t, const struct bsv_stat *st)
{
	const struct tandem_opts *o = b->o;
	printf("tandem bench serving: %s (%s, %s, %s layout:", o->target, b->info.model_name,
	       b->info.architecture, layout(b));
	for (pb_size_t i = 0; i < b->load.workers_count; i++)
		printf(" %s=%s", b->load.workers[i].worker_id, b->load.workers[i].role);
	printf(")\nload: %d %s requests, concurrency %d, reading %.3g tok/s per stream, %s; "
	       "budgets %d per unit, %d final\n",
	       b->n_reqs, o->mode, (int)CM_MIN(o->concurrency, b->n_reqs), o->read_rate,
	       o->temperature > 0 ? "sampled" : "greedy", b->unit_budget, b->final_budget);
	double d = CM_MAX(t->duration, 1e-9);
	printf("requests: %d completed, %d errors, %d restarts in %.2f s (%.3f req/s)\n",
	       t->completed, t->errors, t->restarts, t->duration, t->completed / d);
	printf("tokens: %lld input, %lld output (%lld thought, %lld answer); %.1f output tok/s\n",
	       (long long)t->input, (long long)(t->thought + t->answer), (long long)t->thought,
	       (long long)t->answer, (double)(t->thought + t->answer) / d);
	printf("%-28s %10s %10s %10s %10s %8s\n", "", "mean", "p50", "p90", "p99", "n");
	for (int m = 0; m < M_COUNT; m++)
		printf("%-28s %10.1f %10.1f %10.1f %10.1f %8zu\n", metric_label[m], st[m].mean,
		       st[m].p50, st[m].p90, st[m].p99, st[m].n);
	if (t->first_error)
		printf("first error: %s\n", t->first_error);
}

/* ---- the subcommand ----------------------------------------------------------- */

static int bsv_run(struct bsv *b, struct cm_err *err)
{
	const struct tandem_opts *o = b->o;
	int rc = CM_OK;
	if (!(b->cli = coord_client_new(o->target, err)) || (rc = cluster_wait(b, err)) < 0 ||
	    (rc = load_tokenizer(b, err)) < 0 || (rc = work_load_all(b, err)) < 0)
		return b->cli ? rc : err->code;
	b->n_reqs = (int)o->requests;
	if (!(b->reqs = calloc((size_t)b->n_reqs, sizeof(*b->reqs))))
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	work_assign(b);
	int n = (int)CM_MIN(o->concurrency, o->requests);
	struct cm_pool *pool = cm_pool_new(n);
	if (!pool)
		return cm_err_set(err, CM_ENOMEM, "cannot start %d threads", n);
	if (!o->json)
		fprintf(stderr, "tandem bench serving: %d requests, %d at a time, to %s ...\n",
			b->n_reqs, n, o->target);
	b->t0 = cm_time_us();
	cm_pool_run(pool, stream_main, b);
	b->t1 = cm_time_us();
	cm_pool_free(pool);

	struct bsv_samples m[M_COUNT] = {{0}};
	struct bsv_stat st[M_COUNT];
	collect(b, m);
	for (int k = 0; k < M_COUNT; k++)
		st[k] = stat_of(&m[k]);
	struct bsv_totals t = totals(b);
	if (o->json)
		print_json(b, &t, st);
	else
		print_text(b, &t, st);
	for (int k = 0; k < M_COUNT; k++)
		free(m[k].v);
	return t.errors ? cm_err_set(err, CM_EPEER, "%d of %d requests failed (first: %s)",
				     t.errors, b->n_reqs, t.first_error)
			: CM_OK;
}

int tool_bench_serving(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = {0};
	if (argc || !o->target) {
		fprintf(stderr, "tandem bench serving: give --target HOST:PORT (and no other "
				"arguments)\n");
		return 1;
	}
	struct bsv *b = calloc(1, sizeof(*b));
	if (!b) {
		fprintf(stderr, "tandem bench serving: out of memory\n");
		return 2;
	}
	b->o = o;
	b->unit_budget = o->unit_budget ? (int32_t)o->unit_budget : BSV_UNIT_BUDGET;
	b->final_budget = o->final_budget ? (int32_t)o->final_budget : BSV_FINAL_BUDGET;
	int rc = bsv_run(b, &err);
	for (int i = 0; i < b->n_reqs; i++) {
		free(b->reqs[i].itl.v);
		free(b->reqs[i].gaps.v);
	}
	free(b->reqs);
	for (int i = 0; i < b->n_works; i++)
		work_free(&b->works[i]);
	md_tok_free(b->tok);
	coord_client_free(b->cli);
	free(b);
	if (rc < 0) {
		fprintf(stderr, "tandem bench serving: %s\n", err.msg);
		return rc == CM_ENOMEM || rc == CM_EINTERNAL ? 2 : 1;
	}
	return 0;
}
