/* The worker's end of the coordinator link (msg.c): a ZeroMQ DEALER whose
 * routing id is the worker id. Messages are nanopb WorkerMsg / CoordMsg. */
#ifndef TANDEM_WK_LINK_IMPL_H
#define TANDEM_WK_LINK_IMPL_H

#include "common/cm.h"
#include "proto/internal.pb.h"

struct wk_link;

/* Connects (lazily: ZeroMQ reconnects by itself) to endpoint. */
struct wk_link *wk_link_new(const char *endpoint, const char *id, struct cm_err *err);
void wk_link_free(struct wk_link *l);
/* Sends m without blocking; CM_EAGAIN when the coordinator is not connected. */
int wk_link_send(struct wk_link *l, const tandem_internal_v1_WorkerMsg *m);
/* Waits at most timeout_ms for a message on the link or for fd (>= 0: e.g. the
 * KV link's kvl_fd) to become readable: 1 when either is, 0 on timeout. */
int wk_link_wait(struct wk_link *l, int fd, int timeout_ms);
/* Waits at most timeout_ms: 1 with *m filled, 0 on timeout, CM_EPROTO for an
 * undecodable message (dropped). */
int wk_link_recv(struct wk_link *l, int timeout_ms, tandem_internal_v1_CoordMsg *m);

#endif
