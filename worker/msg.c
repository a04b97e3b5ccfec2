/* The worker's ZeroMQ DEALER: the only worker file that sees ZeroMQ types. */
#include "link-impl.h"

#include <errno.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct wk_link {
	void *ctx, *sock;
	uint8_t buf[tandem_internal_v1_WorkerMsg_size];
};

struct wk_link *wk_link_new(const char *endpoint, const char *id, struct cm_err *err)
{
	struct wk_link *l = calloc(1, sizeof(*l));
	if (!l) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	char ep[512];
	if (strstr(endpoint, "://"))
		snprintf(ep, sizeof(ep), "%s", endpoint);
	else
		snprintf(ep, sizeof(ep), "tcp://%s", endpoint);
	l->ctx = zmq_ctx_new();
	l->sock = l->ctx ? zmq_socket(l->ctx, ZMQ_DEALER) : NULL;
	if (!l->sock) {
		cm_err_set(err, CM_EIO, "ZeroMQ: %s", zmq_strerror(errno));
		goto fail;
	}
	int linger = 0, immediate = 1, ivl = 100, ivl_max = 1000, hwm = 100000;
	zmq_setsockopt(l->sock, ZMQ_ROUTING_ID, id, strlen(id));
	zmq_setsockopt(l->sock, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(l->sock, ZMQ_IMMEDIATE, &immediate, sizeof(immediate));
	zmq_setsockopt(l->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
	zmq_setsockopt(l->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof(ivl_max));
	zmq_setsockopt(l->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(l->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (zmq_connect(l->sock, ep) != 0) {
		cm_err_set(err, CM_EINVAL, "coordinator address %s: %s", ep, zmq_strerror(errno));
		goto fail;
	}
	return l;
fail:
	wk_link_free(l);
	return NULL;
}

void wk_link_free(struct wk_link *l)
{
	if (!l)
		return;
	if (l->sock)
		zmq_close(l->sock);
	if (l->ctx)
		zmq_ctx_term(l->ctx);
	free(l);
}

int wk_link_send(struct wk_link *l, const tandem_internal_v1_WorkerMsg *m)
{
	pb_ostream_t os = pb_ostream_from_buffer(l->buf, sizeof(l->buf));
	if (!pb_encode(&os, tandem_internal_v1_WorkerMsg_fields, m)) {
		CM_LOG_ERROR("worker link: cannot encode (%s)", PB_GET_ERROR(&os));
		return CM_EINTERNAL;
	}
	if (zmq_send(l->sock, l->buf, os.bytes_written, ZMQ_DONTWAIT) < 0)
		return CM_EAGAIN;
	return CM_OK;
}

int wk_link_wait(struct wk_link *l, int fd, int timeout_ms)
{
	zmq_pollitem_t it[2] = {
		{.socket = l->sock, .events = ZMQ_POLLIN},
		{.socket = NULL, .fd = fd, .events = ZMQ_POLLIN},
	};
	int rc = zmq_poll(it, fd >= 0 ? 2 : 1, timeout_ms);
	return rc > 0 ? 1 : 0;
}

int wk_link_recv(struct wk_link *l, int timeout_ms, tandem_internal_v1_CoordMsg *m)
{
	zmq_pollitem_t it = {.socket = l->sock, .events = ZMQ_POLLIN};
	if (zmq_poll(&it, 1, timeout_ms) <= 0 || !(it.revents & ZMQ_POLLIN))
		return 0;
	zmq_msg_t msg;
	zmq_msg_init(&msg);
	if (zmq_msg_recv(&msg, l->sock, ZMQ_DONTWAIT) < 0) {
		zmq_msg_close(&msg);
		return 0;
	}
	int rc = 1;
	pb_istream_t is = pb_istream_from_buffer(zmq_msg_data(&msg), zmq_msg_size(&msg));
	if (!pb_decode(&is, tandem_internal_v1_CoordMsg_fields, m)) {
		CM_LOG_WARN("worker link: undecodable message (%s)", PB_GET_ERROR(&is));
		rc = CM_EPROTO;
	}
	int more = zmq_msg_more(&msg);
	zmq_msg_close(&msg);
	while (more) { /* the coordinator sends single frames: drop extras */
		zmq_msg_init(&msg);
		if (zmq_msg_recv(&msg, l->sock, ZMQ_DONTWAIT) < 0)
			more = 0;
		else
			more = zmq_msg_more(&msg);
		zmq_msg_close(&msg);
	}
	return rc;
}
