/* The HTTP plane on libevent: /healthz (the process answers), /readyz (a worker
 * has registered and loaded the model) and /metrics (Prometheus text format).
 * The only coordinator file that sees libevent types. Polled from the event
 * loop without blocking. */
#include "coord-impl.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct coord_http {
	struct event_base *base;
	struct evhttp *http;
	coord_ready_fn ready;
	coord_metrics_fn metrics;
	void *ud;
};

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *ctype,
		       const char *body, size_t len)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	evbuffer_add(b, body, len);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct coord_http *h = arg;
	const char *uri = evhttp_request_get_uri(req);
	const char *q = strchr(uri, '?');
	size_t n = q ? (size_t)(q - uri) : strlen(uri);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
	    evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if (n == 8 && !strncmp(uri, "/healthz", n)) {
		reply_text(req, 200, "OK", "text/plain", "ok\n", 3);
	} else if (n == 7 && !strncmp(uri, "/readyz", n)) {
		if (h->ready(h->ud))
			reply_text(req, 200, "OK", "text/plain", "ready\n", 6);
		else
			reply_text(req, 503, "Service Unavailable", "text/plain",
				   "no worker ready\n", 16);
	} else if (n == 8 && !strncmp(uri, "/metrics", n)) {
		char *text = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);
		if (!f) {
			evhttp_send_error(req, 500, "out of memory");
			return;
		}
		h->metrics(h->ud, f);
		fclose(f);
		reply_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len);
		free(text);
	} else {
		evhttp_send_error(req, 404, "Not Found");
	}
}

struct coord_http *coord_http_new(const char *host, int port, int *bound, coord_ready_fn ready,
				  coord_metrics_fn metrics, void *ud, struct cm_err *err)
{
	struct coord_http *h = calloc(1, sizeof(*h));
	if (!h) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	h->ready = ready;
	h->metrics = metrics;
	h->ud = ud;
	h->base = event_base_new();
	h->http = h->base ? evhttp_new(h->base) : NULL;
	if (!h->http) {
		cm_err_set(err, CM_ENOMEM, "libevent: cannot create the HTTP server");
		goto fail;
	}
	evhttp_set_gencb(h->http, on_request, h);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	struct evhttp_bound_socket *s =
		evhttp_bind_socket_with_handle(h->http, host, (uint16_t)port);
	if (!s) {
		cm_err_set(err, CM_EIO, "HTTP: cannot listen on %s:%d", host, port);
		goto fail;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	*bound = port;
	if (getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			*bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			*bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	return h;
fail:
	coord_http_free(h);
	return NULL;
}

void coord_http_poll(struct coord_http *h)
{
	if (h)
		event_base_loop(h->base, EVLOOP_NONBLOCK);
}

void coord_http_free(struct coord_http *h)
{
	if (!h)
		return;
	if (h->http)
		evhttp_free(h->http);
	if (h->base)
		event_base_free(h->base);
	free(h);
}
