/* tandem think: the reference client. Streams a file (or stdin) to a Think call
 * at a chosen rate, prints the thoughts (dimmed on a terminal) and the answer as
 * they arrive, then the latency summary. The rate is in tokens per second,
 * estimated as 4 bytes of text per token; the text goes out a word at a time. */
#include "coordinator/coord.h"
#include "proto/tandem.pb.h"
#include "tools.h"

#include <pb_decode.h>
#include <pb_encode.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct think {
	const struct tandem_opts *o;
	struct coord_call *call;
	tandem_v1_ThinkRequest *req;
	uint8_t *buf;
	bool tty, in_thought, any_answer;
	int status;
	char msg[512];
	bool done, over;
	tandem_v1_Done fin;
};

static int read_input(const struct tandem_opts *o, int argc, char **argv, char **text, size_t *n,
		      struct cm_err *err)
{
	const char *path = o->file;
	if (!path && argc == 1)
		path = argv[0];
	if (!path || !strcmp(path, "-")) {
		if (!path && isatty(0))
			return cm_err_set(err, CM_EINVAL, "give --file F, or '-' for stdin");
		size_t cap = 1 << 16, len = 0;
		char *b = malloc(cap);
		size_t r;
		while (b && (r = fread(b + len, 1, cap - len - 1, stdin)) > 0) {
			len += r;
			if (len + 1 == cap) {
				char *nb = realloc(b, cap *= 2);
				if (!nb)
					free(b);
				b = nb;
			}
		}
		if (!b)
			return cm_err_set(err, CM_ENOMEM, "out of memory");
		b[len] = 0;
		*text = b;
		*n = len;
		return CM_OK;
	}
	return cm_file_read(path, text, n, err);
}

static int send_req(struct think *t)
{
	pb_ostream_t os = pb_ostream_from_buffer(t->buf, tandem_v1_ThinkRequest_size);
	if (!pb_encode(&os, tandem_v1_ThinkRequest_fields, t->req))
		return CM_EINTERNAL;
	return coord_call_send(t->call, t->buf, os.bytes_written);
}

static int send_open(struct think *t)
{
	const struct tandem_opts *o = t->o;
	memset(t->req, 0, sizeof(*t->req));
	t->req->which_msg = tandem_v1_ThinkRequest_open_tag;
	tandem_v1_Open *op = &t->req->msg.open;
	op->mode = !strcmp(o->mode, "batch") ? tandem_v1_Mode_MODE_BATCH
					     : tandem_v1_Mode_MODE_STREAMING;
	if (o->system)
		snprintf(op->system, sizeof(op->system), "%s", o->system);
	op->depth = (int32_t)o->depth;
	op->unit_budget = (int32_t)o->unit_budget;
	op->final_budget = (int32_t)o->final_budget;
	op->max_tokens = (int32_t)o->think_max_tokens;
	op->has_sampling = true;
	op->sampling.temperature = (float)o->temperature;
	op->sampling.seed = (uint64_t)o->seed;
	return send_req(t);
}

static int send_text(struct think *t, const char *s, size_t n)
{
	memset(t->req, 0, sizeof(t->req->which_msg) + sizeof(t->req->msg.input.text));
	t->req->which_msg = tandem_v1_ThinkRequest_input_tag;
	t->req->msg.input.token_ids_count = 0;
	memcpy(t->req->msg.input.text, s, n);
	t->req->msg.input.text[n] = 0;
	return send_req(t);
}

static void print_piece(struct think *t, bool thought, const char *text)
{
	if (thought && !t->in_thought && t->tty)
		fputs("\x1b[2m", stdout);
	if (!thought && t->in_thought && t->tty)
		fputs("\x1b[0m", stdout);
	if (!thought && !t->any_answer) {
		fputs("\n", stdout);
		t->any_answer = true;
	}
	t->in_thought = thought;
	fputs(text, stdout);
	fflush(stdout);
}

static const char *reason_name(tandem_v1_FinishReason r)
{
	static const char *const names[] = {"unspecified", "stop",  "length", "eos",
					    "stop_string", "abort", "context"};
	return (size_t)r < CM_ARRAY_LEN(names) ? names[r] : "unknown";
}

static void on_event(void *ud, const uint8_t *data, size_t len)
{
	struct think *t = ud;
	tandem_v1_ThinkEvent ev = tandem_v1_ThinkEvent_init_zero;
	pb_istream_t is = pb_istream_from_buffer(data, len);
	if (!pb_decode(&is, tandem_v1_ThinkEvent_fields, &ev)) {
		fprintf(stderr, "tandem think: bad event from the server (%s)\n",
			PB_GET_ERROR(&is));
		return;
	}
	switch (ev.which_event) {
	case tandem_v1_ThinkEvent_thought_tag:
		return print_piece(t, true, ev.event.thought.text);
	case tandem_v1_ThinkEvent_answer_tag:
		return print_piece(t, false, ev.event.answer.text);
	case tandem_v1_ThinkEvent_restart_tag:
		if (t->in_thought && t->tty)
			fputs("\x1b[0m", stdout);
		t->in_thought = t->any_answer = false;
		fprintf(stdout, "\n[restart %d: %s]\n", ev.event.restart.attempt,
			ev.event.restart.reason);
		return;
	case tandem_v1_ThinkEvent_done_tag:
		t->done = true;
		t->fin = ev.event.done;
		return;
	}
}

static void summary(struct think *t)
{
	if (t->in_thought && t->tty)
		fputs("\x1b[0m", stdout);
	fputs("\n", stdout);
	fflush(stdout);
	if (!t->done)
		return;
	const tandem_v1_Usage *u = &t->fin.usage;
	const tandem_v1_Timings *tm = &t->fin.timings;
	fprintf(stderr,
		"--\nfinish: %s; input %d tokens, %d thought + %d answer tokens\n"
		"input tokens waited before the first thought: %d\n"
		"time to first token: %.3f s\n"
		"input close -> first answer token: %.3f s, -> last answer token: %.3f s\n"
		"end to end: %.3f s\n",
		reason_name(t->fin.finish_reason), u->input_tokens, u->thought_tokens,
		u->answer_tokens, tm->input_tokens_waited, tm->time_to_first_token_seconds,
		tm->close_to_first_answer_seconds, tm->close_to_last_answer_seconds,
		tm->e2e_seconds);
}

/* Reads events until wait_us passes (or forever when < 0), or the call ends;
 * false once it ended. */
static bool pump(struct think *t, int64_t wait_us)
{
	if (coord_call_pump(t->call, wait_us, on_event, t) != 0)
		return true; /* timeout */
	t->status = coord_call_status(t->call, t->msg, sizeof(t->msg));
	t->over = true;
	return false;
}

/* The next piece to send: up to and including the whitespace after a word. */
static size_t next_piece(const char *s, size_t n, size_t max)
{
	size_t i = 0;
	while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t'))
		i++;
	while (i < n && s[i] != ' ' && s[i] != '\n' && s[i] != '\t')
		i++;
	while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t'))
		i++;
	if (i > max) { /* a huge "word": cut at a UTF-8 character start */
		i = max;
		while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
			i--;
	}
	return i;
}

static bool stream_input(struct think *t, const char *text, size_t n)
{
	double rate = t->o->rate;
	int64_t next = cm_time_us();
	size_t at = 0, max = sizeof(t->req->msg.input.text) - 1;
	while (at < n) {
		size_t k = rate > 0 ? next_piece(text + at, n - at, max) : CM_MIN(n - at, max);
		if (rate <= 0)
			while (k < n - at && k > 0 && ((unsigned char)text[at + k] & 0xC0) == 0x80)
				k--;
		if (send_text(t, text + at, k) < 0)
			return false;
		at += k;
		if (rate > 0) {
			double tokens = CM_MAX(1.0, (double)k / 4.0);
			next += (int64_t)(tokens / rate * 1e6);
		}
		if (!pump(t, CM_MAX(next - cm_time_us(), 0)))
			return false;
	}
	memset(t->req, 0, sizeof(t->req->which_msg));
	t->req->which_msg = tandem_v1_ThinkRequest_close_tag;
	send_req(t);
	coord_call_close_send(t->call);
	return true;
}

static int run(struct think *t, const char *text, size_t n, struct cm_err *err)
{
	struct coord_client *cli = coord_client_new(t->o->addr, err);
	if (!cli)
		return err->code;
	int64_t timeout = t->o->timeout > 0 ? (int64_t)(t->o->timeout * 1e6) : 0;
	t->call = coord_call_start(cli, COORD_METHOD_THINK, timeout, err);
	int rc = CM_OK;
	if (!t->call) {
		rc = err->code;
		goto out;
	}
	t->status = COORD_UNKNOWN;
	if (send_open(t) == CM_OK)
		stream_input(t, text, n);
	if (!t->over)
		pump(t, -1);
	summary(t);
	if (t->status != COORD_OK)
		rc = cm_err_set(err, CM_EPEER, "%s: %s", coord_status_name(t->status), t->msg);
out:
	coord_call_free(t->call);
	coord_client_free(cli);
	return rc;
}

int tool_think(const struct tandem_opts *o, int argc, char **argv)
{
	struct cm_err err = {0};
	char *text = NULL;
	size_t n = 0;
	if (argc > 1 || !o->addr) {
		fprintf(stderr, "tandem think: give --addr HOST:PORT and --file F (or '-')\n");
		return 1;
	}
	if (read_input(o, argc, argv, &text, &n, &err) < 0) {
		fprintf(stderr, "tandem think: %s\n", err.msg);
		return 1;
	}
	struct think t = {.o = o, .tty = isatty(1)};
	t.req = malloc(sizeof(*t.req));
	t.buf = malloc(tandem_v1_ThinkRequest_size);
	int rc = t.req && t.buf ? run(&t, text, n, &err) : cm_err_set(&err, CM_ENOMEM, "no memory");
	free(t.req);
	free(t.buf);
	free(text);
	if (rc < 0) {
		fprintf(stderr, "tandem think: %s\n", err.msg);
		return 1;
	}
	return 0;
}
