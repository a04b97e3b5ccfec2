/* The coordinator's end of the worker link: a ZeroMQ ROUTER socket. The only
 * coordinator file that sees ZeroMQ types. Frames are [routing id][payload];
 * payloads are nanopb-encoded WorkerMsg / CoordMsg. */
#include "coord-impl.h"

#include <errno.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct coord_link {
	void *ctx;
	void *sock;
	uint8_t *buf; /* encode buffer, CoordMsg_size */
};

struct coord_link *coord_link_new(const char *host, int port, int *bound, struct cm_err *err)
{
	struct coord_link *l = calloc(1, sizeof(*l));
	char ep[300];
	if (!l || !(l->buf = malloc(tandem_internal_v1_CoordMsg_size))) {
		free(l);
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	l->ctx = zmq_ctx_new();
	l->sock = l->ctx ? zmq_socket(l->ctx, ZMQ_ROUTER) : NULL;
	if (!l->sock) {
		cm_err_set(err, CM_EIO, "ZeroMQ: %s", zmq_strerror(errno));
		goto fail;
	}
	int hwm = 100000, linger = 0, mandatory = 1;
	zmq_setsockopt(l->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(l->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(l->sock, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(l->sock, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof(mandatory));
	if (port)
		snprintf(ep, sizeof(ep), "tcp://%s:%d", host, port);
	else
		snprintf(ep, sizeof(ep), "tcp://%s:*", host);
	if (zmq_bind(l->sock, ep) != 0) {
		cm_err_set(err, CM_EIO, "worker link: cannot listen on %s: %s", ep,
			   zmq_strerror(errno));
		goto fail;
	}
	char last[300];
	size_t n = sizeof(last);
	zmq_getsockopt(l->sock, ZMQ_LAST_ENDPOINT, last, &n);
	const char *colon = strrchr(last, ':');
	*bound = colon ? atoi(colon + 1) : port;
	return l;
fail:
	coord_link_free(l);
	return NULL;
}

void coord_link_free(struct coord_link *l)
{
	if (!l)
		return;
	if (l->sock)
		zmq_close(l->sock);
	if (l->ctx)
		zmq_ctx_term(l->ctx);
	free(l->buf);
	free(l);
}

/* Reads the rest of a multipart message and drops it. */
static void drain_parts(void *sock)
{
	int more = 1;
	size_t sz = sizeof(more);
	while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
		zmq_msg_t m;
		zmq_msg_init(&m);
		zmq_msg_recv(&m, sock, ZMQ_DONTWAIT);
		zmq_msg_close(&m);
	}
}

int coord_link_recv(struct coord_link *l, int timeout_ms, struct coord_peer *peer,
		    tandem_internal_v1_WorkerMsg *msg)
{
	zmq_pollitem_t it = {.socket = l->sock, .events = ZMQ_POLLIN};
	if (zmq_poll(&it, 1, timeout_ms) <= 0 || !(it.revents & ZMQ_POLLIN))
		return 0;
	zmq_msg_t id, body;
	zmq_msg_init(&id);
	if (zmq_msg_recv(&id, l->sock, ZMQ_DONTWAIT) < 0) {
		zmq_msg_close(&id);
		return 0;
	}
	peer->len = CM_MIN(zmq_msg_size(&id), sizeof(peer->id));
	memcpy(peer->id, zmq_msg_data(&id), peer->len);
	int more = zmq_msg_more(&id);
	zmq_msg_close(&id);
	if (!more)
		return CM_EPROTO;
	zmq_msg_init(&body);
	int rc = CM_OK;
	if (zmq_msg_recv(&body, l->sock, ZMQ_DONTWAIT) < 0) {
		rc = CM_EPROTO;
	} else {
		pb_istream_t is = pb_istream_from_buffer(zmq_msg_data(&body), zmq_msg_size(&body));
		memset(msg, 0, sizeof(*msg));
		if (!pb_decode(&is, tandem_internal_v1_WorkerMsg_fields, msg)) {
			CM_LOG_WARN("worker link: undecodable message (%s)", PB_GET_ERROR(&is));
			rc = CM_EPROTO;
		}
	}
	zmq_msg_close(&body);
	drain_parts(l->sock);
	return rc < 0 ? rc : 1;
}

int coord_link_send(struct coord_link *l, const struct coord_peer *peer,
		    const tandem_internal_v1_CoordMsg *msg)
{
	pb_ostream_t os = pb_ostream_from_buffer(l->buf, tandem_internal_v1_CoordMsg_size);
	if (!pb_encode(&os, tandem_internal_v1_CoordMsg_fields, msg)) {
		CM_LOG_ERROR("worker link: cannot encode (%s)", PB_GET_ERROR(&os));
		return CM_EINTERNAL;
	}
	if (zmq_send(l->sock, peer->id, peer->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
	    zmq_send(l->sock, l->buf, os.bytes_written, ZMQ_DONTWAIT) < 0) {
		CM_LOG_DEBUG("worker link: send to %.*s failed: %s", (int)peer->len, peer->id,
			     zmq_strerror(errno));
		return CM_EPEER;
	}
	return CM_OK;
}
