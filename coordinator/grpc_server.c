/* The gRPC server adapter: the only coordinator file that sees grpc_* types.
 *
 * It turns completion-queue tags into coord_rpc_ev structs and copies every
 * received payload out of gRPC's byte buffers at once. Each call keeps at most
 * one receive and one send in flight; sends queue behind each other and the
 * final status goes out after the last queued message.
 *
 * A call's life: NEW (method known) -> MSG* -> HALF_CLOSE -> the app finishes
 * it; or GONE at any point (client cancel, deadline, broken connection), after
 * which the app must drop its pointer. After coord_rpc_finish the app must not
 * touch the rpc again either; the adapter frees it when gRPC is done with it.
 */
#include "coord-impl.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

enum op_kind { OP_NEW, OP_RECV, OP_SEND, OP_STATUS, OP_CLOSE, OP_SHUTDOWN };

struct op {
	enum op_kind kind;
	struct coord_rpc *rpc;
};

struct out_msg {
	struct out_msg *next;
	grpc_byte_buffer *bb;
};

struct coord_rpc {
	struct coord_grpc *g;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array md;
	enum coord_method method;
	int64_t deadline_us; /* monotonic µs; 0: none */
	struct op op_recv, op_send, op_status, op_close;
	int in_flight; /* batches started and not completed */
	grpc_byte_buffer *recv_bb;
	bool recv_done, send_busy, closed;
	int cancelled_int; /* RECV_CLOSE_ON_SERVER's verdict */
	bool finish_queued, status_sent, app_done, have_details;
	int status;
	grpc_slice status_details;
	struct out_msg *out_head, *out_tail;
	int n_out;
	void *ud;
	struct coord_rpc *prev, *next; /* all live rpcs */
};

struct coord_grpc {
	grpc_server *server;
	grpc_completion_queue *cq;
	struct coord_rpc *pending; /* the rpc waiting for a new call */
	struct op op_new, op_shutdown;
	struct coord_rpc *live;
	uint8_t *msg; /* the last MSG event's payload */
	bool shutting_down;
};

static enum coord_method method_of(grpc_slice m)
{
	static const struct {
		const char *path;
		enum coord_method m;
	} tab[] = {
		{COORD_METHOD_THINK, COORD_M_THINK},
		{COORD_METHOD_GENERATE, COORD_M_GENERATE},
		{COORD_METHOD_MODEL_INFO, COORD_M_MODEL_INFO},
		{COORD_METHOD_LOAD, COORD_M_LOAD},
		{COORD_METHOD_ABORT, COORD_M_ABORT},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(tab); i++)
		if (!grpc_slice_str_cmp(m, tab[i].path))
			return tab[i].m;
	return COORD_M_UNKNOWN;
}

static int request_next_call(struct coord_grpc *g)
{
	struct coord_rpc *r = calloc(1, sizeof(*r));
	if (!r)
		return CM_ENOMEM;
	r->g = g;
	grpc_call_details_init(&r->details);
	grpc_metadata_array_init(&r->md);
	r->op_recv = (struct op){OP_RECV, r};
	r->op_send = (struct op){OP_SEND, r};
	r->op_status = (struct op){OP_STATUS, r};
	r->op_close = (struct op){OP_CLOSE, r};
	g->pending = r;
	g->op_new.rpc = r;
	if (grpc_server_request_call(g->server, &r->call, &r->details, &r->md, g->cq, g->cq,
				     &g->op_new) != GRPC_CALL_OK) {
		grpc_call_details_destroy(&r->details);
		grpc_metadata_array_destroy(&r->md);
		free(r);
		g->pending = NULL;
		return CM_EINTERNAL;
	}
	return CM_OK;
}

struct coord_grpc *coord_grpc_new(const char *host, int port, int max_msg, int *bound,
				  struct cm_err *err)
{
	struct coord_grpc *g = calloc(1, sizeof(*g));
	if (!g) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	grpc_init();
	grpc_arg args[] = {
		{.type = GRPC_ARG_INTEGER,
		 .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
		 .value.integer = max_msg},
		{.type = GRPC_ARG_INTEGER,
		 .key = (char *)GRPC_ARG_ALLOW_REUSEPORT,
		 .value.integer = 0},
	};
	grpc_channel_args ca = {CM_ARRAY_LEN(args), args};
	g->server = grpc_server_create(&ca, NULL);
	g->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(g->server, g->cq, NULL);
	char addr[300];
	snprintf(addr, sizeof(addr), "%s:%d", host, port);
	grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
	*bound = grpc_server_add_http2_port(g->server, addr, creds);
	grpc_server_credentials_release(creds);
	if (*bound <= 0) {
		cm_err_set(err, CM_EIO, "gRPC: cannot listen on %s", addr);
		grpc_server_destroy(g->server);
		grpc_completion_queue_shutdown(g->cq);
		while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
			       .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(g->cq);
		grpc_shutdown();
		free(g);
		return NULL;
	}
	grpc_server_start(g->server);
	g->op_new = (struct op){OP_NEW, NULL};
	g->op_shutdown = (struct op){OP_SHUTDOWN, NULL};
	if (request_next_call(g) < 0) {
		cm_err_set(err, CM_EINTERNAL, "gRPC: cannot accept calls");
		coord_grpc_free(g);
		return NULL;
	}
	return g;
}

static void rpc_free(struct coord_rpc *r)
{
	struct coord_grpc *g = r->g;
	if (r->prev)
		r->prev->next = r->next;
	else if (g->live == r)
		g->live = r->next;
	if (r->next)
		r->next->prev = r->prev;
	while (r->out_head) {
		struct out_msg *m = r->out_head;
		r->out_head = m->next;
		grpc_byte_buffer_destroy(m->bb);
		free(m);
	}
	if (r->recv_bb)
		grpc_byte_buffer_destroy(r->recv_bb);
	if (r->have_details)
		grpc_slice_unref(r->status_details);
	if (r->call)
		grpc_call_unref(r->call);
	grpc_call_details_destroy(&r->details);
	grpc_metadata_array_destroy(&r->md);
	free(r);
}

/* Frees r when gRPC and the app are both done with it. */
static void rpc_maybe_free(struct coord_rpc *r)
{
	if (r->in_flight == 0 && r->closed && r->app_done)
		rpc_free(r);
}

static int start_batch(struct coord_rpc *r, const grpc_op *ops, size_t n, struct op *tag)
{
	if (grpc_call_start_batch(r->call, ops, n, tag, NULL) != GRPC_CALL_OK)
		return CM_EPEER;
	r->in_flight++;
	return CM_OK;
}

static void post_recv(struct coord_rpc *r)
{
	grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
	op.data.recv_message.recv_message = &r->recv_bb;
	if (start_batch(r, &op, 1, &r->op_recv) < 0)
		r->recv_done = true;
}

/* Starts the next send, or the status once every message is out. */
static void pump_send(struct coord_rpc *r)
{
	if (r->send_busy || r->status_sent || r->closed)
		return;
	if (r->out_head) {
		grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
		op.data.send_message.send_message = r->out_head->bb;
		if (start_batch(r, &op, 1, &r->op_send) == CM_OK)
			r->send_busy = true;
		return;
	}
	if (!r->finish_queued)
		return;
	grpc_op op = {.op = GRPC_OP_SEND_STATUS_FROM_SERVER};
	op.data.send_status_from_server.status = (grpc_status_code)r->status;
	op.data.send_status_from_server.status_details = &r->status_details;
	r->status_sent = true;
	if (start_batch(r, &op, 1, &r->op_status) < 0)
		CM_LOG_DEBUG("grpc: status not sent (call over)");
}

static void on_new_call(struct coord_grpc *g, bool ok, struct coord_rpc_ev *ev)
{
	struct coord_rpc *r = g->pending;
	g->pending = NULL;
	if (!g->shutting_down)
		request_next_call(g);
	if (!ok) {
		r->closed = true;
		r->app_done = true;
		rpc_free(r);
		return;
	}
	r->next = g->live;
	if (g->live)
		g->live->prev = r;
	g->live = r;
	r->method = method_of(r->details.method);
	gpr_timespec dl = gpr_convert_clock_type(r->details.deadline, GPR_CLOCK_MONOTONIC);
	gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
	if (gpr_time_cmp(dl, gpr_inf_future(GPR_CLOCK_MONOTONIC)) != 0) {
		int64_t left = (int64_t)gpr_timespec_to_micros(gpr_time_sub(dl, now));
		r->deadline_us = cm_time_us() + CM_MAX(left, 0);
	}
	grpc_op ops[2] = {{.op = GRPC_OP_SEND_INITIAL_METADATA},
			  {.op = GRPC_OP_RECV_CLOSE_ON_SERVER}};
	ops[1].data.recv_close_on_server.cancelled = &r->cancelled_int;
	if (start_batch(r, ops, 2, &r->op_close) < 0)
		r->closed = true;
	post_recv(r);
	ev->type = COORD_RPC_NEW;
	ev->rpc = r;
	ev->method = r->method;
}

static bool on_recv(struct coord_rpc *r, bool ok, struct coord_rpc_ev *ev)
{
	struct coord_grpc *g = r->g;
	if (!ok || !r->recv_bb) {
		/* the client half-closed (or the call broke: OP_CLOSE will say) */
		r->recv_done = true;
		if (!ok || r->app_done)
			return false;
		ev->type = COORD_RPC_HALF_CLOSE;
		ev->rpc = r;
		return true;
	}
	grpc_byte_buffer_reader rd;
	size_t n = 0;
	free(g->msg);
	g->msg = NULL;
	if (grpc_byte_buffer_reader_init(&rd, r->recv_bb)) {
		grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
		n = GRPC_SLICE_LENGTH(s);
		g->msg = malloc(n ? n : 1);
		if (g->msg)
			memcpy(g->msg, GRPC_SLICE_START_PTR(s), n);
		grpc_slice_unref(s);
		grpc_byte_buffer_reader_destroy(&rd);
	}
	grpc_byte_buffer_destroy(r->recv_bb);
	r->recv_bb = NULL;
	if (r->app_done)
		return false;
	if (!g->msg) {
		coord_rpc_finish(r, COORD_RESOURCE_EXHAUSTED, "server out of memory");
		return false;
	}
	post_recv(r);
	ev->type = COORD_RPC_MSG;
	ev->rpc = r;
	ev->data = g->msg;
	ev->len = n;
	return true;
}

static void on_send(struct coord_rpc *r, bool ok)
{
	r->send_busy = false;
	struct out_msg *m = r->out_head;
	if (m) {
		r->out_head = m->next;
		if (!r->out_head)
			r->out_tail = NULL;
		r->n_out--;
		grpc_byte_buffer_destroy(m->bb);
		free(m);
	}
	if (!ok) {
		/* the call is over: drop what is queued; OP_CLOSE reports it */
		while (r->out_head) {
			m = r->out_head;
			r->out_head = m->next;
			grpc_byte_buffer_destroy(m->bb);
			free(m);
		}
		r->out_tail = NULL;
		r->n_out = 0;
		return;
	}
	pump_send(r);
}

static bool on_close(struct coord_rpc *r, struct coord_rpc_ev *ev)
{
	r->closed = true;
	if (r->app_done)
		return false;
	/* the call ended before the app finished it: cancelled, deadline or broken */
	r->app_done = true;
	ev->type = COORD_RPC_GONE;
	ev->rpc = r;
	ev->deadline = r->deadline_us && cm_time_us() >= r->deadline_us;
	return true;
}

/* Handles one completion; true when it produced an app event. */
static bool dispatch(struct coord_grpc *g, grpc_event e, struct coord_rpc_ev *ev)
{
	struct op *op = e.tag;
	struct coord_rpc *r = op->rpc;
	bool ok = e.success != 0, out = false;
	if (op->kind == OP_NEW) {
		on_new_call(g, ok, ev);
		return ok;
	}
	if (op->kind == OP_SHUTDOWN)
		return false;
	r->in_flight--;
	switch (op->kind) {
	case OP_RECV:
		out = on_recv(r, ok, ev);
		break;
	case OP_SEND:
		on_send(r, ok);
		break;
	case OP_CLOSE:
		out = on_close(r, ev);
		break;
	default:
		break;
	}
	if (!out)
		rpc_maybe_free(r);
	return out;
}

int coord_grpc_poll(struct coord_grpc *g, int64_t timeout_us, struct coord_rpc_ev *ev)
{
	memset(ev, 0, sizeof(*ev));
	gpr_timespec dl = timeout_us <= 0
				  ? gpr_inf_past(GPR_CLOCK_MONOTONIC)
				  : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
						 gpr_time_from_micros(timeout_us, GPR_TIMESPAN));
	for (;;) {
		grpc_event e = grpc_completion_queue_next(g->cq, dl, NULL);
		if (e.type != GRPC_OP_COMPLETE)
			return 0;
		if (dispatch(g, e, ev))
			return 1;
		dl = gpr_inf_past(GPR_CLOCK_MONOTONIC);
	}
}

/* After a GONE event, the app is done with the rpc too: free it when gRPC is. */
void coord_rpc_release(struct coord_rpc *r)
{
	rpc_maybe_free(r);
}

int coord_rpc_send(struct coord_rpc *r, const void *data, size_t len)
{
	if (r->finish_queued || r->closed)
		return CM_EPEER;
	if (r->n_out >= COORD_RPC_MAX_QUEUED) {
		coord_rpc_finish(r, COORD_RESOURCE_EXHAUSTED, "client reads too slowly");
		return CM_EFULL;
	}
	struct out_msg *m = malloc(sizeof(*m));
	if (!m)
		return CM_ENOMEM;
	grpc_slice s = grpc_slice_from_copied_buffer(data, len);
	m->bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	m->next = NULL;
	if (r->out_tail)
		r->out_tail->next = m;
	else
		r->out_head = m;
	r->out_tail = m;
	r->n_out++;
	pump_send(r);
	return CM_OK;
}

void coord_rpc_finish(struct coord_rpc *r, int status, const char *msg)
{
	if (r->finish_queued)
		return;
	r->finish_queued = true;
	r->app_done = true;
	r->status = status;
	r->status_details = grpc_slice_from_copied_string(msg ? msg : "");
	r->have_details = true;
	pump_send(r);
	rpc_maybe_free(r);
}

enum coord_method coord_rpc_method(const struct coord_rpc *r)
{
	return r->method;
}

int64_t coord_rpc_deadline(const struct coord_rpc *r)
{
	return r->deadline_us;
}

void coord_rpc_set_ud(struct coord_rpc *r, void *ud)
{
	r->ud = ud;
}

void *coord_rpc_ud(const struct coord_rpc *r)
{
	return r->ud;
}

void coord_grpc_free(struct coord_grpc *g)
{
	if (!g)
		return;
	g->shutting_down = true;
	grpc_server_shutdown_and_notify(g->server, g->cq, &g->op_shutdown);
	grpc_server_cancel_all_calls(g->server);
	struct coord_rpc_ev ev;
	for (;;) {
		grpc_event e = grpc_completion_queue_next(
			g->cq,
			gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				     gpr_time_from_millis(2000, GPR_TIMESPAN)),
			NULL);
		if (e.type != GRPC_OP_COMPLETE)
			break;
		struct op *op = e.tag;
		if (op->kind == OP_SHUTDOWN)
			break;
		if (dispatch(g, e, &ev) && ev.type == COORD_RPC_GONE)
			rpc_maybe_free(ev.rpc);
	}
	/* calls the app still holds are finished by the app before this; any left die here */
	while (g->live) {
		struct coord_rpc *r = g->live;
		r->app_done = r->closed = true;
		r->in_flight = 0;
		rpc_free(r);
	}
	grpc_server_destroy(g->server);
	grpc_completion_queue_shutdown(g->cq);
	for (;;) {
		grpc_event e =
			grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (e.type == GRPC_QUEUE_SHUTDOWN)
			break;
	}
	grpc_completion_queue_destroy(g->cq);
	if (g->pending) {
		grpc_call_details_destroy(&g->pending->details);
		grpc_metadata_array_destroy(&g->pending->md);
		if (g->pending->call)
			grpc_call_unref(g->pending->call);
		free(g->pending);
	}
	free(g->msg);
	free(g);
	grpc_shutdown();
}
