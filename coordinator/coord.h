/* coordinator: `tandem serve`. The public gRPC API (tandem.v1.Tandem), the HTTP
 * plane (health, readiness, Prometheus metrics), the worker registry over
 * ZeroMQ, request state machines and the relay of tokens from workers to
 * clients. It tokenizes and segments input, places each request through
 * scheduler/ and keeps every open request's input until the request ends, so a
 * request survives the loss of its worker.
 *
 * It also holds the gRPC client adapter (coord_client / coord_call) that
 * `tandem think` and the integration tests use: no grpc_* type leaves
 * coordinator/grpc_*.c.
 *
 * Threads: coord_serve runs everything on the calling thread (one event loop:
 * gRPC completion queue, ZeroMQ socket, libevent). A coord_call is used by one
 * thread at a time; a coord_client may be shared.
 *
 *     struct coord_params p = coord_default_params();
 *     p.model = "models/tiny-s1"; p.stop = &stop_flag;
 *     if (coord_serve(&p, &err) < 0) fprintf(stderr, "%s\n", err.msg);
 */
#ifndef TANDEM_COORD_H
#define TANDEM_COORD_H

#include "common/cm.h"

#include <signal.h>

/* gRPC status codes (the numbers are gRPC's, fixed by its spec). */
enum coord_status {
	COORD_OK = 0,
	COORD_CANCELLED = 1,
	COORD_UNKNOWN = 2,
	COORD_INVALID_ARGUMENT = 3,
	COORD_DEADLINE_EXCEEDED = 4,
	COORD_NOT_FOUND = 5,
	COORD_ALREADY_EXISTS = 6,
	COORD_RESOURCE_EXHAUSTED = 8,
	COORD_FAILED_PRECONDITION = 9,
	COORD_UNIMPLEMENTED = 12,
	COORD_INTERNAL = 13,
	COORD_UNAVAILABLE = 14,
};

/* "INVALID_ARGUMENT" etc.; "UNKNOWN" for codes not listed above. */
const char *coord_status_name(int code);

/* Method paths of the public API. */
#define COORD_METHOD_THINK	"/tandem.v1.Tandem/Think"
#define COORD_METHOD_GENERATE	"/tandem.v1.Tandem/Generate"
#define COORD_METHOD_MODEL_INFO "/tandem.v1.Tandem/GetModelInfo"
#define COORD_METHOD_LOAD	"/tandem.v1.Tandem/GetLoad"
#define COORD_METHOD_ABORT	"/tandem.v1.Tandem/Abort"

/* ---- the server ---------------------------------------------------------- */

struct coord_params {
	const char *model;	      /* model folder (tokenizer, config; workers load it) */
	const char *host;	      /* address every listener binds, e.g. "127.0.0.1" */
	int grpc_port;		      /* 0: any free port (see port_file) */
	int http_port;		      /* 0: any free port; -1: no HTTP plane */
	int worker_port;	      /* ZeroMQ ROUTER for workers; 0: any free port */
	const char *port_file;	      /* when set, "grpc=P\nhttp=H\nworker=W\n" is written there */
	int max_requests;	      /* open requests at most (RESOURCE_EXHAUSTED beyond) */
	int max_input_tokens;	      /* input tokens per request at most; 0: the model's context */
	int default_max_tokens;	      /* when a request says 0 */
	int unit_budget;	      /* reasoning tokens per unit when a request says 0 */
	int final_budget;	      /* tokens after close when a request says 0 */
	int64_t heartbeat_timeout_ms; /* a silent worker is removed after this */
	volatile sig_atomic_t *stop;  /* set (by a signal handler) to stop serving */
};

struct coord_params coord_default_params(void);

/* Loads the tokenizer and config of p->model, binds the gRPC, HTTP and worker
 * ports and serves until *p->stop becomes non-zero. Errors (CM_ENOENT,
 * CM_EFORMAT for the model; CM_EIO when a port cannot be bound) come back
 * before serving starts; once serving, every client or worker failure is
 * handled and logged, never returned. */
int coord_serve(const struct coord_params *p, struct cm_err *err);

/* ---- the client adapter -------------------------------------------------- */

struct coord_client;
struct coord_call;

/* A channel to addr ("host:port"), insecure. NULL and err on failure. */
struct coord_client *coord_client_new(const char *addr, struct cm_err *err);
void coord_client_free(struct coord_client *c);

/* Starts a call of method (a COORD_METHOD_*); timeout_us > 0 sets a deadline.
 * The call is owned by the caller (coord_call_free). */
struct coord_call *coord_call_start(struct coord_client *c, const char *method, int64_t timeout_us,
				    struct cm_err *err);
/* Queues one message (copied); messages go out in order. CM_EPEER once the call
 * is over. */
int coord_call_send(struct coord_call *call, const void *data, size_t len);
/* Queues the client's half-close after the messages already queued. */
int coord_call_close_send(struct coord_call *call);
/* Cancels the call (the server sees the client go away). */
void coord_call_cancel(struct coord_call *call);
/* Waits at most timeout_us (< 0: forever) for the next received message.
 * Returns 1 with a malloc'd *data (caller frees), 0 when the call is over
 * (coord_call_status tells how), CM_EAGAIN on timeout. */
int coord_call_next(struct coord_call *call, int64_t timeout_us, void **data, size_t *len);
/* Hands each message received within wait_us (< 0: until the call is over) to
 * fn(ud, data, len), in order (data is freed after). Returns 0 once the call is
 * over (coord_call_status tells how), CM_EAGAIN when the wait passed first. */
int coord_call_pump(struct coord_call *call, int64_t wait_us,
		    void (*fn)(void *ud, const uint8_t *data, size_t len), void *ud);
/* The final status code (enum coord_status) once coord_call_next returned 0;
 * the server's message is copied to msg. */
int coord_call_status(const struct coord_call *call, char *msg, size_t cap);
/* Cancels if still running, waits for the call's operations and frees it. */
void coord_call_free(struct coord_call *call);

/* One request message, one response message (GetModelInfo, GetLoad, Abort).
 * Returns the status code (COORD_OK: *resp is malloc'd), or a negative
 * cm_errno when the call could not be made. */
int coord_unary(struct coord_client *c, const char *method, const void *req, size_t req_len,
		int64_t timeout_us, void **resp, size_t *resp_len, char *msg, size_t cap);

#endif
