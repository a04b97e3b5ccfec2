/* The worker registry: Hello/Welcome registration with the protocol version,
 * Ready once the model is loaded, heartbeats with load reports, and removal of
 * a worker that goes silent (its requests are re-placed). */
#include "coord-impl.h"

#include <string.h>

tandem_internal_v1_CoordMsg *coord__cmsg(struct coord *c, pb_size_t which)
{
	/* only the fields that oneof member uses are cleared: Start is 700 KB */
	c->cmsg->which_msg = which;
	switch (which) {
	case tandem_internal_v1_CoordMsg_start_tag:
		memset(&c->cmsg->msg.start, 0, offsetof(tandem_internal_v1_Start, prompt));
		c->cmsg->msg.start.prompt_count = 0;
		memset(&c->cmsg->msg.start.max_tokens, 0,
		       sizeof(*c->cmsg) -
			       offsetof(tandem_internal_v1_CoordMsg, msg.start.max_tokens));
		break;
	case tandem_internal_v1_CoordMsg_unit_tag:
		c->cmsg->msg.unit.req = 0;
		c->cmsg->msg.unit.ids_count = 0;
		break;
	default:
		memset(&c->cmsg->msg, 0, sizeof(tandem_internal_v1_Welcome));
		break;
	}
	return c->cmsg;
}

void coord__send(struct coord *c, int w)
{
	if (w >= 0 && w < COORD_MAX_WORKERS && c->workers[w].used)
		coord_link_send(c->link, &c->workers[w].peer, c->cmsg);
}

static int find_peer(const struct coord *c, const struct coord_peer *p)
{
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		const struct coord_worker *w = &c->workers[i];
		if (w->used && w->peer.len == p->len && !memcmp(w->peer.id, p->id, p->len))
			return i;
	}
	return -1;
}

int coord__ready_workers(const struct coord *c)
{
	int n = 0;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		n += c->workers[i].used && c->workers[i].ready;
	return n;
}

int coord__serving_workers(const struct coord *c)
{
	int n = 0;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		n += c->workers[i].used && c->workers[i].ready &&
		     c->workers[i].role != tandem_internal_v1_Role_ROLE_ENCODE;
	return n;
}

static void remove_worker(struct coord *c, int w, const char *why)
{
	CM_LOG_WARN("worker %s removed: %s", c->workers[w].id, why);
	c->workers[w].ready = false;
	c->sw[w].live = false;
	c->m.workers_lost++;
	coord__worker_lost(c, w);
	coord__nccl_forget(c, w);
	memset(&c->workers[w], 0, sizeof(c->workers[w]));
	memset(&c->sw[w], 0, sizeof(c->sw[w]));
}

static void send_to_peer(struct coord *c, const struct coord_peer *p)
{
	coord_link_send(c->link, p, c->cmsg);
}

static void on_hello(struct coord *c, const struct coord_peer *p, const tandem_internal_v1_Hello *h)
{
	int w = find_peer(c, p);
	if (w >= 0)
		remove_worker(c, w, "registered again");
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_welcome_tag);
	tandem_internal_v1_Welcome *wl = &m->msg.welcome;
	wl->protocol_version = tandem_internal_v1_Version_PROTOCOL_VERSION;
	coord__strcpy(wl->model_dir, sizeof(wl->model_dir), c->model_path);
	if (h->protocol_version != tandem_internal_v1_Version_PROTOCOL_VERSION) {
		snprintf(wl->reason, sizeof(wl->reason),
			 "protocol version %u, this coordinator speaks %d", h->protocol_version,
			 tandem_internal_v1_Version_PROTOCOL_VERSION);
		CM_LOG_WARN("worker %.64s rejected: %s", h->worker_id, wl->reason);
		return send_to_peer(c, p);
	}
	for (w = 0; w < COORD_MAX_WORKERS && c->workers[w].used; w++)
		;
	if (w == COORD_MAX_WORKERS) {
		snprintf(wl->reason, sizeof(wl->reason), "too many workers (%d)",
			 COORD_MAX_WORKERS);
		return send_to_peer(c, p);
	}
	struct coord_worker *k = &c->workers[w];
	memset(k, 0, sizeof(*k));
	k->used = true;
	k->peer = *p;
	coord__strcpy(k->id, sizeof(k->id), h->worker_id[0] ? h->worker_id : "worker");
	coord__strcpy(k->device, sizeof(k->device), h->device[0] ? h->device : "cpu");
	k->role = h->role == tandem_internal_v1_Role_ROLE_ENCODE ||
				  h->role == tandem_internal_v1_Role_ROLE_DECODE
			  ? h->role
			  : tandem_internal_v1_Role_ROLE_BOTH;
	k->nccl = h->nccl;
	k->last_seen_us = cm_time_us();
	struct sched_worker *s = &c->sw[w];
	memset(s, 0, sizeof(*s));
	s->role = (enum sched_role)k->role;
	s->cap.flop_rate = h->peak_flops > 0 ? h->peak_flops : 0;
	s->cap.bandwidth = h->read_bytes_per_s > 0 ? h->read_bytes_per_s : 0;
	wl->accepted = true;
	CM_LOG_INFO("worker %s registered (%s, role %d, %.1f GFLOP/s, %.1f GB/s)", k->id, k->device,
		    (int)k->role, s->cap.flop_rate / 1e9, s->cap.bandwidth / 1e9);
	send_to_peer(c, p);
}

static void on_ready(struct coord *c, int w, const tandem_internal_v1_Ready *r)
{
	struct coord_worker *k = &c->workers[w];
	k->ready = true;
	k->kv_tokens = r->kv_tokens;
	k->max_seqs = r->max_seqs;
	k->kv_bytes = r->kv_bytes;
	coord__strcpy(k->kv_endpoint, sizeof(k->kv_endpoint), r->kv_endpoint);
	struct sched_worker *s = &c->sw[w];
	s->live = true;
	s->max_seqs = r->max_seqs;
	if (r->kv_tokens > 0 && r->kv_bytes > 0) {
		/* the pool as the worker stores it (f32 or f16 KV): costs count KV
		 * bytes at the workers' element size */
		const struct md_config *g = &c->cfg;
		c->sp.kv_bytes = (double)r->kv_bytes / (double)r->kv_tokens /
				 (2.0 * g->n_layer * g->n_kv_head * g->head_dim);
		s->cap.kv_bytes = (double)r->kv_bytes;
	} else {
		s->cap.kv_bytes = r->kv_tokens > 0 ? r->kv_tokens * sched_kv_token_bytes(&c->cfg, &c->sp) : 0;
	}
	CM_LOG_INFO("worker %s ready (kv %d tokens, %d sequences%s%s)", k->id, r->kv_tokens,
		    r->max_seqs, k->kv_endpoint[0] ? ", KV link " : "", k->kv_endpoint);
}

void coord__link_message(struct coord *c, const struct coord_peer *peer,
			 const tandem_internal_v1_WorkerMsg *msg)
{
	if (msg->which_msg == tandem_internal_v1_WorkerMsg_hello_tag)
		return on_hello(c, peer, &msg->msg.hello);
	int w = find_peer(c, peer);
	if (w < 0) {
		/* we restarted, or removed it: ask it to register again */
		coord__cmsg(c, tandem_internal_v1_CoordMsg_reset_tag);
		return send_to_peer(c, peer);
	}
	c->workers[w].last_seen_us = cm_time_us();
	switch (msg->which_msg) {
	case tandem_internal_v1_WorkerMsg_ready_tag:
		return on_ready(c, w, &msg->msg.ready);
	case tandem_internal_v1_WorkerMsg_heartbeat_tag:
		c->workers[w].hb = msg->msg.heartbeat;
		if (c->workers[w].ready)
			coord__progress(c, w);
		coord__cmsg(c, tandem_internal_v1_CoordMsg_ack_tag);
		return coord__send(c, w);
	case tandem_internal_v1_WorkerMsg_events_tag:
		return coord__worker_events(c, w, &msg->msg.events);
	case tandem_internal_v1_WorkerMsg_failed_tag:
		return coord__worker_failed(c, w, &msg->msg.failed);
	case tandem_internal_v1_WorkerMsg_fatal_tag:
		return remove_worker(c, w, msg->msg.fatal.msg);
	default:
		CM_LOG_WARN("worker %s: unknown message %d", c->workers[w].id, (int)msg->which_msg);
	}
}

void coord__check_workers(struct coord *c)
{
	int64_t now = cm_time_us();
	for (int w = 0; w < COORD_MAX_WORKERS; w++) {
		struct coord_worker *k = &c->workers[w];
		if (!k->used)
			continue;
		int64_t limit = k->ready ? c->p->heartbeat_timeout_ms : COORD_LOAD_TIMEOUT_MS;
		if (now - k->last_seen_us > limit * 1000)
			remove_worker(c, w, "no heartbeat");
	}
}
