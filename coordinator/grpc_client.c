/* The gRPC client adapter (`tandem think`, tests): the only client-side file
 * that sees grpc_* types. A call owns its completion queue; it keeps one receive
 * and one send in flight and queues the rest, so one thread can stream input
 * and read events on the same call. */
#include "coord.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

struct coord_client {
	grpc_channel *ch;
};

enum cop_kind { COP_META, COP_RECV, COP_SEND, COP_STATUS };

struct cop {
	enum cop_kind kind;
};

struct qmsg {
	struct qmsg *next;
	grpc_byte_buffer *bb; /* NULL: the half-close */
};

struct coord_call {
	grpc_call *call;
	grpc_completion_queue *cq;
	struct cop op_meta, op_recv, op_send, op_status;
	int in_flight;
	grpc_metadata_array md_init, md_trail;
	grpc_byte_buffer *recv_bb;
	bool recv_busy, recv_end, send_busy, status_done, send_closed;
	struct qmsg *q_head, *q_tail;
	grpc_status_code status;
	grpc_slice details;
	/* one received message waiting for coord_call_next */
	void *ready;
	size_t ready_len;
	bool have_ready;
};

struct coord_client *coord_client_new(const char *addr, struct cm_err *err)
{
	struct coord_client *c = calloc(1, sizeof(*c));
	if (!c) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	grpc_init();
	grpc_arg args[] = {{.type = GRPC_ARG_INTEGER,
			    .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
			    .value.integer = 16 << 20}};
	grpc_channel_args ca = {CM_ARRAY_LEN(args), args};
	grpc_channel_credentials *cr = grpc_insecure_credentials_create();
	c->ch = grpc_channel_create(addr, cr, &ca);
	grpc_channel_credentials_release(cr);
	if (!c->ch) {
		cm_err_set(err, CM_EINVAL, "cannot create a channel to %s", addr);
		free(c);
		grpc_shutdown();
		return NULL;
	}
	return c;
}

void coord_client_free(struct coord_client *c)
{
	if (!c)
		return;
	grpc_channel_destroy(c->ch);
	free(c);
	grpc_shutdown();
}

static bool batch(struct coord_call *k, grpc_op *ops, size_t n, struct cop *tag)
{
	if (grpc_call_start_batch(k->call, ops, n, tag, NULL) != GRPC_CALL_OK)
		return false;
	k->in_flight++;
	return true;
}

static void pump(struct coord_call *k)
{
	if (k->send_busy || !k->q_head || k->status_done)
		return;
	grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
	if (k->q_head->bb)
		op.data.send_message.send_message = k->q_head->bb;
	else
		op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	k->send_busy = batch(k, &op, 1, &k->op_send);
}

static void post_recv(struct coord_call *k)
{
	if (k->recv_busy || k->recv_end || k->have_ready)
		return;
	grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
	op.data.recv_message.recv_message = &k->recv_bb;
	k->recv_busy = batch(k, &op, 1, &k->op_recv);
	if (!k->recv_busy)
		k->recv_end = true;
}

struct coord_call *coord_call_start(struct coord_client *c, const char *method, int64_t timeout_us,
				    struct cm_err *err)
{
	struct coord_call *k = calloc(1, sizeof(*k));
	if (!k) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	k->op_meta.kind = COP_META;
	k->op_recv.kind = COP_RECV;
	k->op_send.kind = COP_SEND;
	k->op_status.kind = COP_STATUS;
	grpc_metadata_array_init(&k->md_init);
	grpc_metadata_array_init(&k->md_trail);
	k->cq = grpc_completion_queue_create_for_next(NULL);
	k->details = grpc_empty_slice();
	gpr_timespec dl = timeout_us > 0
				  ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
						 gpr_time_from_micros(timeout_us, GPR_TIMESPAN))
				  : gpr_inf_future(GPR_CLOCK_MONOTONIC);
	grpc_slice m = grpc_slice_from_copied_string(method);
	k->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, k->cq, m, NULL, dl,
					   NULL);
	grpc_slice_unref(m);
	grpc_op ops[2] = {{.op = GRPC_OP_SEND_INITIAL_METADATA},
			  {.op = GRPC_OP_RECV_INITIAL_METADATA}};
	ops[1].data.recv_initial_metadata.recv_initial_metadata = &k->md_init;
	grpc_op st = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
	st.data.recv_status_on_client.trailing_metadata = &k->md_trail;
	st.data.recv_status_on_client.status = &k->status;
	st.data.recv_status_on_client.status_details = &k->details;
	if (!k->call || !batch(k, ops, 2, &k->op_meta) || !batch(k, &st, 1, &k->op_status)) {
		cm_err_set(err, CM_EINTERNAL, "cannot start a call of %s", method);
		coord_call_free(k);
		return NULL;
	}
	return k;
}

static int enqueue(struct coord_call *k, grpc_byte_buffer *bb)
{
	struct qmsg *q = malloc(sizeof(*q));
	if (!q) {
		if (bb)
			grpc_byte_buffer_destroy(bb);
		return CM_ENOMEM;
	}
	q->bb = bb;
	q->next = NULL;
	if (k->q_tail)
		k->q_tail->next = q;
	else
		k->q_head = q;
	k->q_tail = q;
	pump(k);
	return CM_OK;
}

int coord_call_send(struct coord_call *k, const void *data, size_t len)
{
	if (k->status_done || k->send_closed)
		return CM_EPEER;
	grpc_slice s = grpc_slice_from_copied_buffer(data, len);
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return enqueue(k, bb);
}

int coord_call_close_send(struct coord_call *k)
{
	if (k->status_done || k->send_closed)
		return CM_EPEER;
	k->send_closed = true;
	return enqueue(k, NULL);
}

void coord_call_cancel(struct coord_call *k)
{
	grpc_call_cancel(k->call, NULL);
}

static void drop_queue(struct coord_call *k)
{
	while (k->q_head) {
		struct qmsg *q = k->q_head;
		k->q_head = q->next;
		if (q->bb)
			grpc_byte_buffer_destroy(q->bb);
		free(q);
	}
	k->q_tail = NULL;
}

static void on_recv(struct coord_call *k, bool ok)
{
	k->recv_busy = false;
	if (!ok || !k->recv_bb) {
		k->recv_end = true;
		return;
	}
	grpc_byte_buffer_reader rd;
	if (grpc_byte_buffer_reader_init(&rd, k->recv_bb)) {
		grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
		k->ready_len = GRPC_SLICE_LENGTH(s);
		k->ready = malloc(k->ready_len ? k->ready_len : 1);
		if (k->ready) {
			memcpy(k->ready, GRPC_SLICE_START_PTR(s), k->ready_len);
			k->have_ready = true;
		}
		grpc_slice_unref(s);
		grpc_byte_buffer_reader_destroy(&rd);
	}
	grpc_byte_buffer_destroy(k->recv_bb);
	k->recv_bb = NULL;
}

static void on_send(struct coord_call *k, bool ok)
{
	k->send_busy = false;
	struct qmsg *q = k->q_head;
	if (q) {
		k->q_head = q->next;
		if (!k->q_head)
			k->q_tail = NULL;
		if (q->bb)
			grpc_byte_buffer_destroy(q->bb);
		free(q);
	}
	if (!ok)
		drop_queue(k);
	else
		pump(k);
}

/* Handles one completion; false on timeout. */
static bool step(struct coord_call *k, gpr_timespec dl)
{
	grpc_event e = grpc_completion_queue_next(k->cq, dl, NULL);
	if (e.type != GRPC_OP_COMPLETE)
		return false;
	k->in_flight--;
	struct cop *op = e.tag;
	switch (op->kind) {
	case COP_RECV:
		on_recv(k, e.success);
		break;
	case COP_SEND:
		on_send(k, e.success);
		break;
	case COP_STATUS:
		k->status_done = true;
		drop_queue(k);
		break;
	case COP_META:
		break;
	}
	return true;
}

int coord_call_next(struct coord_call *k, int64_t timeout_us, void **data, size_t *len)
{
	gpr_timespec dl = timeout_us < 0
				  ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
				  : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
						 gpr_time_from_micros(timeout_us, GPR_TIMESPAN));
	for (;;) {
		if (k->have_ready) {
			*data = k->ready;
			*len = k->ready_len;
			k->ready = NULL;
			k->have_ready = false;
			post_recv(k);
			return 1;
		}
		post_recv(k);
		if (k->recv_end && k->status_done)
			return 0;
		if (!step(k, dl))
			return CM_EAGAIN;
	}
}

int coord_call_pump(struct coord_call *k, int64_t wait_us,
		    void (*fn)(void *ud, const uint8_t *data, size_t len), void *ud)
{
	const int64_t until = cm_time_us() + wait_us;
	for (;;) {
		void *d;
		size_t n;
		int64_t left = wait_us < 0 ? -1 : CM_MAX(until - cm_time_us(), 0);
		int rc = coord_call_next(k, left, &d, &n);
		if (rc != 1)
			return rc;
		fn(ud, d, n);
		free(d);
	}
}

int coord_call_status(const struct coord_call *k, char *msg, size_t cap)
{
	if (msg && cap) {
		size_t n = CM_MIN(GRPC_SLICE_LENGTH(k->details), cap - 1);
		memcpy(msg, GRPC_SLICE_START_PTR(k->details), n);
		msg[n] = 0;
	}
	return k->status_done ? (int)k->status : COORD_UNKNOWN;
}

void coord_call_free(struct coord_call *k)
{
	if (!k)
		return;
	if (k->call) {
		if (!k->status_done)
			grpc_call_cancel(k->call, NULL);
		while (k->in_flight > 0)
			step(k, gpr_inf_future(GPR_CLOCK_MONOTONIC));
		grpc_call_unref(k->call);
	}
	drop_queue(k);
	free(k->ready);
	if (k->recv_bb)
		grpc_byte_buffer_destroy(k->recv_bb);
	grpc_slice_unref(k->details);
	grpc_metadata_array_destroy(&k->md_init);
	grpc_metadata_array_destroy(&k->md_trail);
	grpc_completion_queue_shutdown(k->cq);
	while (grpc_completion_queue_next(k->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(k->cq);
	free(k);
}

int coord_unary(struct coord_client *c, const char *method, const void *req, size_t req_len,
		int64_t timeout_us, void **resp, size_t *resp_len, char *msg, size_t cap)
{
	struct cm_err err = {0};
	*resp = NULL;
	*resp_len = 0;
	struct coord_call *k = coord_call_start(c, method, timeout_us, &err);
	if (!k)
		return err.code;
	coord_call_send(k, req, req_len);
	coord_call_close_send(k);
	void *d;
	size_t n;
	int rc;
	while ((rc = coord_call_next(k, -1, &d, &n)) == 1) {
		free(*resp);
		*resp = d;
		*resp_len = n;
	}
	int st = coord_call_status(k, msg, cap);
	coord_call_free(k);
	if (st != COORD_OK) {
		free(*resp);
		*resp = NULL;
		*resp_len = 0;
	}
	return st;
}
