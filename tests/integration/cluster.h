/* Integration-test helpers: a real `tandem serve` and `tandem worker`s on
 * loopback (ports picked by the kernel, read back from --port-file), a gRPC
 * client through coordinator/coord.h, and nanopb encoding of the public API.
 * Children die with the test process (PR_SET_PDEATHSIG) and are killed in
 * cl_stop; every wait is bounded. */
#ifndef TANDEM_TEST_CLUSTER_H
#define TANDEM_TEST_CLUSTER_H

#include "../helpers.h"
#include "coordinator/coord.h"
#include "proto/tandem.pb.h"

#include <arpa/inet.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define CL_MAX_WORKERS 6
#define CL_MAX_WFLAGS  6

struct cluster {
	char model[1024];
	char dir[1024];
	pid_t serve, worker[CL_MAX_WORKERS];
	int n_workers;
	int grpc, http, wport;
	char addr[64];
	struct coord_client *cli;
	const char *wflags[CL_MAX_WFLAGS + 1]; /* more worker flags, NULL-terminated */
};

static inline pid_t cl_spawn(char *const argv[], const char *log)
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		FILE *f = freopen(log, "w", stderr);
		(void)f;
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static inline void cl_kill(pid_t *pid, int sig)
{
	if (*pid <= 0)
		return;
	kill(*pid, sig);
	for (int i = 0; i < 500; i++) { /* 5 s */
		int st;
		if (waitpid(*pid, &st, WNOHANG) == *pid) {
			*pid = 0;
			return;
		}
		usleep(10000);
	}
	kill(*pid, SIGKILL);
	waitpid(*pid, NULL, 0);
	*pid = 0;
}

/* Starts worker slot i as `id` with a role (both, encode, decode). Fixed
 * capacities keep the scheduler's choices the same from run to run. */
static inline void cl_start_role(struct cluster *c, int i, const char *id, const char *role)
{
	char coord[64], log[1200];
	snprintf(coord, sizeof(coord), "tcp://127.0.0.1:%d", c->wport);
	snprintf(log, sizeof(log), "%s/worker%d-%s.log", c->dir, i, id);
	char *argv[] = {getenv("TANDEM_BIN"),
			"worker",
			"--coordinator",
			coord,
			"--worker-id",
			(char *)id,
			"--role",
			(char *)role,
			"--threads",
			"1",
			"--heartbeat-ms",
			"100",
			"--max-seqs",
			"40",
			"--kv-tokens",
			"32768",
			"--peak-gflops",
			"10",
			"--read-gbps",
			"10",
			"--log-level",
			"info",
			NULL,
			[CL_MAX_WFLAGS + 24] = NULL};
	int a = 0;
	while (argv[a])
		a++;
	for (int f = 0; c->wflags[f]; f++)
		argv[a++] = (char *)c->wflags[f];
	c->worker[i] = cl_spawn(argv, log);
	if (i >= c->n_workers)
		c->n_workers = i + 1;
}

static inline void cl_start_worker(struct cluster *c, int i)
{
	char id[32];
	snprintf(id, sizeof(id), "w%d", i);
	cl_start_role(c, i, id, "both");
}

static inline int cl_ready_workers(struct cluster *c);

/* Waits (60 s at most) until exactly n workers are ready. */
static inline void cl_wait_ready(struct cluster *c, int n)
{
	int ready = -1;
	for (int i = 0; i < 600 && ready != n; i++) {
		ready = cl_ready_workers(c);
		if (ready != n)
			usleep(100000);
	}
	cr_assert_eq(ready, n, "%d workers ready, not %d (see %s)", ready, n, c->dir);
}

/* Starts a coordinator and n workers (wflags: more worker flags, NULL-terminated,
 * or NULL); waits until all are ready. */
static inline void cl_start_flags(struct cluster *c, int n, const char *tag,
				  const char *hb_timeout_ms, const char *const *wflags)
{
	memset(c, 0, sizeof(*c));
	for (int f = 0; wflags && wflags[f]; f++) {
		cr_assert_lt(f, CL_MAX_WFLAGS);
		c->wflags[f] = wflags[f];
	}
	th_gen_model(c->model, sizeof(c->model), "tiny", 1, false);
	th_tmpdir(c->dir, sizeof(c->dir), tag);
	char ports[1200], log[1200];
	snprintf(ports, sizeof(ports), "%s/ports", c->dir);
	snprintf(log, sizeof(log), "%s/serve.log", c->dir);
	char *argv[] = {getenv("TANDEM_BIN"),
			"serve",
			"--model",
			c->model,
			"--grpc-port",
			"0",
			"--http-port",
			"0",
			"--worker-port",
			"0",
			"--port-file",
			ports,
			"--heartbeat-timeout-ms",
			(char *)hb_timeout_ms,
			"--log-level",
			"info",
			NULL};
	c->serve = cl_spawn(argv, log);
	for (int i = 0; i < 3000 && !c->grpc; i++) { /* 30 s */
		FILE *f = fopen(ports, "r");
		if (f) {
			if (fscanf(f, "grpc=%d\nhttp=%d\nworker=%d", &c->grpc, &c->http,
				   &c->wport) != 3)
				c->grpc = 0;
			fclose(f);
		}
		if (!c->grpc)
			usleep(10000);
	}
	cr_assert_gt(c->grpc, 0, "tandem serve did not start (see %s)", log);
	snprintf(c->addr, sizeof(c->addr), "127.0.0.1:%d", c->grpc);
	struct cm_err err = {0};
	c->cli = coord_client_new(c->addr, &err);
	cr_assert_not_null(c->cli, "%s", err.msg);
	for (int i = 0; i < n; i++)
		cl_start_worker(c, i);
	cl_wait_ready(c, n);
}

static inline void cl_start(struct cluster *c, int n, const char *tag, const char *hb_timeout_ms)
{
	cl_start_flags(c, n, tag, hb_timeout_ms, NULL);
}

static inline void cl_stop(struct cluster *c)
{
	coord_client_free(c->cli);
	c->cli = NULL;
	for (int i = 0; i < c->n_workers; i++)
		cl_kill(&c->worker[i], SIGTERM);
	cl_kill(&c->serve, SIGTERM);
	th_rmdir(c->model); /* 90 MB each; the logs in c->dir stay */
}

/* ---- messages ------------------------------------------------------------ */

static inline size_t cl_encode(const pb_msgdesc_t *d, const void *m, uint8_t *buf, size_t cap)
{
	pb_ostream_t os = pb_ostream_from_buffer(buf, cap);
	cr_assert(pb_encode(&os, d, m), "encode: %s", PB_GET_ERROR(&os));
	return os.bytes_written;
}

static inline int cl_unary(struct cluster *c, const char *method, const pb_msgdesc_t *req_d,
			   const void *req, const pb_msgdesc_t *resp_d, void *resp)
{
	uint8_t buf[512];
	size_t n = cl_encode(req_d, req, buf, sizeof(buf));
	void *out;
	size_t len;
	char msg[256];
	int st = coord_unary(c->cli, method, buf, n, 10000000, &out, &len, msg, sizeof(msg));
	if (st == COORD_OK) {
		pb_istream_t is = pb_istream_from_buffer(out, len);
		cr_assert(pb_decode(&is, resp_d, resp), "decode: %s", PB_GET_ERROR(&is));
		free(out);
	}
	return st;
}

static inline int cl_load(struct cluster *c, tandem_v1_Load *ld)
{
	tandem_v1_LoadRequest rq = tandem_v1_LoadRequest_init_zero;
	memset(ld, 0, sizeof(*ld));
	return cl_unary(c, COORD_METHOD_LOAD, tandem_v1_LoadRequest_fields, &rq,
			tandem_v1_Load_fields, ld);
}

/* Workers that have sent a heartbeat since loading their model. */
static inline int cl_ready_workers(struct cluster *c)
{
	tandem_v1_Load *ld = malloc(sizeof(*ld));
	int n = 0;
	if (cl_load(c, ld) == COORD_OK)
		for (pb_size_t i = 0; i < ld->workers_count; i++)
			n += ld->workers[i].kv_blocks_total > 0;
	free(ld);
	return n;
}

/* What a Think or Generate call returned. */
struct cl_result {
	int status;
	char msg[256];
	int32_t thought[4096], answer[4096];
	int n_thought, n_answer;
	int restarts;
	bool done;
	tandem_v1_Done fin;
	char request_id[65];
};

/* Reads one event into res; false when the call is over. */
static inline bool cl_next(struct coord_call *k, struct cl_result *res, int64_t timeout_us)
{
	void *d;
	size_t n;
	int rc = coord_call_next(k, timeout_us, &d, &n);
	if (rc == 0) {
		res->status = coord_call_status(k, res->msg, sizeof(res->msg));
		return false;
	}
	cr_assert_eq(rc, 1, "no event within %lld us", (long long)timeout_us);
	tandem_v1_ThinkEvent *ev = calloc(1, sizeof(*ev));
	pb_istream_t is = pb_istream_from_buffer(d, n);
	cr_assert(pb_decode(&is, tandem_v1_ThinkEvent_fields, ev));
	free(d);
	snprintf(res->request_id, sizeof(res->request_id), "%s", ev->request_id);
	switch (ev->which_event) {
	case tandem_v1_ThinkEvent_thought_tag:
		for (pb_size_t i = 0;
		     i < ev->event.thought.token_ids_count && res->n_thought < 4096; i++)
			res->thought[res->n_thought++] = ev->event.thought.token_ids[i];
		break;
	case tandem_v1_ThinkEvent_answer_tag:
		for (pb_size_t i = 0; i < ev->event.answer.token_ids_count && res->n_answer < 4096;
		     i++)
			res->answer[res->n_answer++] = ev->event.answer.token_ids[i];
		break;
	case tandem_v1_ThinkEvent_restart_tag:
		res->restarts++;
		res->n_thought = res->n_answer = 0;
		break;
	case tandem_v1_ThinkEvent_done_tag:
		res->done = true;
		res->fin = ev->event.done;
		break;
	}
	free(ev);
	return true;
}

static inline void cl_drain(struct coord_call *k, struct cl_result *res)
{
	while (cl_next(k, res, 60000000))
		;
}

static inline void cl_send_think(struct coord_call *k, const tandem_v1_ThinkRequest *m)
{
	uint8_t *buf = malloc(tandem_v1_ThinkRequest_size);
	size_t n = cl_encode(tandem_v1_ThinkRequest_fields, m, buf, tandem_v1_ThinkRequest_size);
	cr_assert_eq(coord_call_send(k, buf, n), CM_OK);
	free(buf);
}

static inline tandem_v1_ThinkRequest *cl_open_msg(int max_tokens, bool batch)
{
	tandem_v1_ThinkRequest *m = calloc(1, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_open_tag;
	m->msg.open.max_tokens = max_tokens;
	m->msg.open.mode = batch ? tandem_v1_Mode_MODE_BATCH : tandem_v1_Mode_MODE_STREAMING;
	m->msg.open.unit_budget = 4;
	m->msg.open.final_budget = 8;
	return m;
}

static inline void cl_send_text(struct coord_call *k, const char *text)
{
	tandem_v1_ThinkRequest *m = calloc(1, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_input_tag;
	snprintf(m->msg.input.text, sizeof(m->msg.input.text), "%s", text);
	cl_send_think(k, m);
	free(m);
}

static inline void cl_send_close(struct coord_call *k)
{
	tandem_v1_ThinkRequest m = {.which_msg = tandem_v1_ThinkRequest_close_tag};
	cl_send_think(k, &m);
	coord_call_close_send(k);
}

/* A whole Think call: open, the sentences, close; events into res. */
static inline void cl_think(struct cluster *c, const char *const *text, int n, int max_tokens,
			    bool batch, struct cl_result *res)
{
	struct cm_err err = {0};
	memset(res, 0, sizeof(*res));
	struct coord_call *k = coord_call_start(c->cli, COORD_METHOD_THINK, 120000000, &err);
	cr_assert_not_null(k, "%s", err.msg);
	tandem_v1_ThinkRequest *m = cl_open_msg(max_tokens, batch);
	cl_send_think(k, m);
	free(m);
	for (int i = 0; i < n; i++)
		cl_send_text(k, text[i]);
	cl_send_close(k);
	cl_drain(k, res);
	coord_call_free(k);
}

/* A Generate call on token ids, greedy. */
static inline void cl_generate(struct cluster *c, const int32_t *ids, int n, int max_tokens,
			       struct cl_result *res)
{
	struct cm_err err = {0};
	memset(res, 0, sizeof(*res));
	tandem_v1_GenerateRequest *g = calloc(1, sizeof(*g));
	for (int i = 0; i < n; i++)
		g->token_ids[g->token_ids_count++] = ids[i];
	g->max_tokens = max_tokens;
	uint8_t *buf = malloc(tandem_v1_GenerateRequest_size);
	size_t len =
		cl_encode(tandem_v1_GenerateRequest_fields, g, buf, tandem_v1_GenerateRequest_size);
	struct coord_call *k = coord_call_start(c->cli, COORD_METHOD_GENERATE, 120000000, &err);
	cr_assert_not_null(k, "%s", err.msg);
	coord_call_send(k, buf, len);
	coord_call_close_send(k);
	cl_drain(k, res);
	coord_call_free(k);
	free(buf);
	free(g);
}

/* GET path on the coordinator's HTTP plane at port; returns the status code and the body (malloc'd). */
static inline int cl_http_get(int port, const char *path, char **body)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	char req[256];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
	cr_assert_eq(write(fd, req, (size_t)n), n);
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	ssize_t r;
	while ((r = read(fd, buf + len, cap - len - 1)) > 0)
		len += (size_t)r;
	close(fd);
	buf[len] = 0;
	int code = 0;
	sscanf(buf, "HTTP/1.%*d %d", &code);
	char *b = strstr(buf, "\r\n\r\n");
	*body = strdup(b ? b + 4 : "");
	free(buf);
	return code;
}

#endif
