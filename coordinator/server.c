/* tandem serve: the coordinator's set-up, event loop and unary calls. */
#include "coord-impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct coord_params coord_default_params(void)
{
	return (struct coord_params){
		.host = "127.0.0.1",
		.grpc_port = 50051,
		.http_port = 8000,
		.worker_port = 5557,
		.max_requests = 1024,
		.default_max_tokens = 512,
		.unit_budget = 64,
		.final_budget = 256,
		.heartbeat_timeout_ms = 5000,
	};
}

const char *coord_status_name(int code)
{
	switch (code) {
	case COORD_OK:
		return "OK";
	case COORD_CANCELLED:
		return "CANCELLED";
	case COORD_INVALID_ARGUMENT:
		return "INVALID_ARGUMENT";
	case COORD_DEADLINE_EXCEEDED:
		return "DEADLINE_EXCEEDED";
	case COORD_NOT_FOUND:
		return "NOT_FOUND";
	case COORD_ALREADY_EXISTS:
		return "ALREADY_EXISTS";
	case COORD_RESOURCE_EXHAUSTED:
		return "RESOURCE_EXHAUSTED";
	case COORD_FAILED_PRECONDITION:
		return "FAILED_PRECONDITION";
	case COORD_UNIMPLEMENTED:
		return "UNIMPLEMENTED";
	case COORD_INTERNAL:
		return "INTERNAL";
	case COORD_UNAVAILABLE:
		return "UNAVAILABLE";
	default:
		return "UNKNOWN";
	}
}

/* ---- unary calls ---------------------------------------------------------- */

static void reply(struct coord *c, struct coord_rpc *rpc, const pb_msgdesc_t *desc, const void *msg)
{
	int n = coord_api_encode(desc, msg, c->buf, c->buf_cap);
	if (n < 0)
		return coord_rpc_finish(rpc, COORD_INTERNAL, "cannot encode the reply");
	coord_rpc_send(rpc, c->buf, (size_t)n);
	coord_rpc_finish(rpc, COORD_OK, "");
}

static void model_info(struct coord *c, struct coord_rpc *rpc)
{
	tandem_v1_ModelInfo mi = tandem_v1_ModelInfo_init_zero;
	coord__strcpy(mi.model_name, sizeof(mi.model_name), c->model_name);
	coord__strcpy(mi.model_path, sizeof(mi.model_path), c->model_path);
	snprintf(mi.architecture, sizeof(mi.architecture), "%s",
		 c->cfg.arch == MD_ARCH_QWEN3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM");
	mi.max_context = c->cfg.max_pos;
	mi.vocab_size = c->cfg.vocab;
	mi.hidden_size = c->cfg.hidden;
	mi.num_layers = c->cfg.n_layer;
	for (int32_t i = 0; i < c->stops.n && i < 16; i++)
		mi.stop_token_ids[mi.stop_token_ids_count++] = c->stops.ids[i];
	reply(c, rpc, tandem_v1_ModelInfo_fields, &mi);
}

static void load(struct coord *c, struct coord_rpc *rpc)
{
	tandem_v1_Load ld = tandem_v1_Load_init_zero;
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		const struct coord_worker *w = &c->workers[i];
		if (!w->used)
			continue;
		tandem_v1_WorkerLoad *o = &ld.workers[ld.workers_count++];
		coord__strcpy(o->worker_id, sizeof(o->worker_id), w->id);
		snprintf(o->role, sizeof(o->role), "%s",
			 w->role == tandem_internal_v1_Role_ROLE_ENCODE	  ? "encode"
			 : w->role == tandem_internal_v1_Role_ROLE_DECODE ? "decode"
									  : "both");
		coord__strcpy(o->device, sizeof(o->device), w->device);
		o->running_sequences = w->hb.running;
		o->queued_sequences = w->hb.queued;
		o->kv_blocks_used = w->hb.kv_blocks_used;
		o->kv_blocks_total = w->hb.kv_blocks_total;
		o->kv_usage_ratio = w->hb.kv_blocks_total
					    ? (double)w->hb.kv_blocks_used / w->hb.kv_blocks_total
					    : 0;
		o->scheduled_flops = c->sw[i].outstanding_flops;
		o->requests = c->sw[i].requests;
	}
	for (struct coord_req *r = c->reqs; r; r = r->next) {
		if (r->worker >= 0)
			ld.requests_running++;
		else
			ld.requests_waiting++;
	}
	reply(c, rpc, tandem_v1_Load_fields, &ld);
}

static void abort_call(struct coord *c, struct coord_rpc *rpc, const uint8_t *data, size_t len)
{
	struct cm_err err = {0};
	tandem_v1_AbortRequest a = tandem_v1_AbortRequest_init_zero;
	if (coord_api_decode(tandem_v1_AbortRequest_fields, data, len, &a, &err) < 0)
		return coord_rpc_finish(rpc, COORD_INVALID_ARGUMENT, err.msg);
	struct coord_req *r = coord__req_find_client(c, a.request_id);
	if (!r)
		return coord_rpc_finish(rpc, COORD_NOT_FOUND, "no such request");
	coord__req_abort(c, r);
	tandem_v1_AbortResponse resp = tandem_v1_AbortResponse_init_zero;
	reply(c, rpc, tandem_v1_AbortResponse_fields, &resp);
}

void coord__unary(struct coord *c, struct coord_rpc *rpc, const uint8_t *data, size_t len)
{
	switch (coord_rpc_method(rpc)) {
	case COORD_M_MODEL_INFO:
		return model_info(c, rpc);
	case COORD_M_LOAD:
		return load(c, rpc);
	case COORD_M_ABORT:
		return abort_call(c, rpc, data, len);
	default:
		return coord_rpc_finish(rpc, COORD_UNIMPLEMENTED, "unknown method");
	}
}

/* ---- set-up and loop ------------------------------------------------------ */

static bool http_ready(void *ud)
{
	return coord__serving_workers(ud) > 0;
}

static void http_metrics(void *ud, FILE *f)
{
	coord__metrics_write(ud, f);
}

static int load_model(struct coord *c, struct cm_err *err)
{
	const struct coord_params *p = c->p;
	int rc;
	if (!p->model)
		return cm_err_set(err, CM_EINVAL, "no model folder (--model DIR)");
	if ((rc = md_config_load(p->model, &c->cfg, err)) < 0)
		return rc;
	if ((rc = md_stop_ids_load(p->model, &c->cfg, &c->stops, err)) < 0)
		return rc;
	if (!(c->tok = md_tok_load(p->model, err)))
		return err->code;
	char abs[PATH_MAX];
	coord__strcpy(c->model_path, sizeof(c->model_path),
		      realpath(p->model, abs) ? abs : p->model);
	const char *base = strrchr(c->model_path, '/');
	coord__strcpy(c->model_name, sizeof(c->model_name),
		      base && base[1] ? base + 1 : c->model_path);
	c->max_input = p->max_input_tokens > 0 ? p->max_input_tokens : c->cfg.max_pos;
	return CM_OK;
}

static int alloc_scratch(struct coord *c, struct cm_err *err)
{
	c->buf_cap = CM_MAX(tandem_v1_ThinkEvent_size, tandem_v1_Load_size) + 64;
	c->think_msg = malloc(sizeof(*c->think_msg));
	c->gen_msg = malloc(sizeof(*c->gen_msg));
	c->ev = malloc(sizeof(*c->ev));
	c->cmsg = calloc(1, sizeof(*c->cmsg));
	c->wmsg = malloc(sizeof(*c->wmsg));
	c->buf = malloc(c->buf_cap);
	c->text_cap = MD_TOK_STREAM_CAP(c->tok);
	c->text = malloc(c->text_cap);
	if (!c->think_msg || !c->gen_msg || !c->ev || !c->cmsg || !c->wmsg || !c->buf || !c->text)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	return CM_OK;
}

static int write_ports(const char *path, int g, int h, int w, struct cm_err *err)
{
	char text[128];
	int n = snprintf(text, sizeof(text), "grpc=%d\nhttp=%d\nworker=%d\n", g, h, w);
	return cm_file_write(path, text, (size_t)n, err);
}

static int start(struct coord *c, struct cm_err *err)
{
	const struct coord_params *p = c->p;
	int rc, gport = 0, hport = -1, wport = 0;
	if ((rc = load_model(c, err)) < 0 || (rc = alloc_scratch(c, err)) < 0)
		return rc;
	if (!(c->link = coord_link_new(p->host, p->worker_port, &wport, err)))
		return err->code;
	if (p->http_port >= 0 && !(c->http = coord_http_new(p->host, p->http_port, &hport,
							    http_ready, http_metrics, c, err)))
		return err->code;
	if (!(c->grpc = coord_grpc_new(p->host, p->grpc_port, COORD_MAX_MSG, &gport, err)))
		return err->code;
	if (p->port_file && (rc = write_ports(p->port_file, gport, hport, wport, err)) < 0)
		return rc;
	CM_LOG_INFO("serving %s: gRPC %s:%d, HTTP %d, workers tcp://%s:%d", c->model_name, p->host,
		    gport, hport, p->host, wport);
	fprintf(stderr, "tandem serve: model %s; gRPC %s:%d; HTTP %d; workers tcp://%s:%d\n",
		c->model_name, p->host, gport, hport, p->host, wport);
	return CM_OK;
}

static void loop_once(struct coord *c)
{
	struct coord_peer peer;
	int rc = coord_link_recv(c->link, 1, &peer, c->wmsg);
	for (int k = 0; rc != 0 && k < 256; k++) {
		if (rc > 0)
			coord__link_message(c, &peer, c->wmsg);
		rc = coord_link_recv(c->link, 0, &peer, c->wmsg);
	}
	struct coord_rpc_ev ev;
	int64_t wait = 1000;
	for (int k = 0; k < 256 && coord_grpc_poll(c->grpc, wait, &ev) == 1; k++) {
		coord__rpc_event(c, &ev);
		wait = 0;
	}
	coord_http_poll(c->http);
	coord__check_workers(c);
}

static void stop(struct coord *c)
{
	coord__req_end_all(c, COORD_UNAVAILABLE, "the server is shutting down");
	coord_grpc_free(c->grpc);
	coord_http_free(c->http);
	coord_link_free(c->link);
	md_tok_free(c->tok);
	free(c->think_msg);
	free(c->gen_msg);
	free(c->ev);
	free(c->cmsg);
	free(c->wmsg);
	free(c->buf);
	free(c->text);
}

int coord_serve(const struct coord_params *p, struct cm_err *err)
{
	struct coord *c = calloc(1, sizeof(*c));
	if (!c)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	c->p = p;
	coord_metrics_init(&c->m);
	coord__sched_init(c);
	int rc = start(c, err);
	while (rc == CM_OK && !(p->stop && *p->stop))
		loop_once(c);
	stop(c);
	free(c);
	return rc;
}
