/* bench_kvlink: the KV link's ZeroMQ transport over loopback (docs/performance.md,
 * "KV link"). Two kvl in one process, a sender and a receiver thread; the
 * receiver acknowledges each unit as soon as it has it. Per dtype it reports
 *   - streaming: units per second and GB/s of KV with the default 64 MiB window;
 *   - round trip: one unit sent, received and acknowledged, nothing else in
 *     flight (median µs);
 *   - copy: one malloc + memcpy of the unit's KV (what zmq_send pays per frame).
 * The unit is Qwen3-0.6B's: 28 layers, 8 KV heads of 128, 25 tokens.
 *
 *     bench_kvlink [--seconds S] [--tokens N] [--json]
 */
#include "worker/kvlink.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct bench {
	struct kvl *a, *b;
	struct kvl_shape s;
	int32_t n_tok;
	double seconds;
	atomic_bool stop;
	int64_t received;
};

static void *receiver(void *arg)
{
	struct bench *bn = arg;
	while (!atomic_load(&bn->stop)) {
		struct kvl_unit u;
		if (kvl_recv(bn->b, 10, &u, NULL) == 1) {
			kvl_ack(bn->b, &u, NULL);
			bn->received++;
		}
	}
	return NULL;
}

static struct kvl *bench_kvl(const struct kvl_shape *s)
{
	struct kvl_params p = kvl_default_params();
	p.shape = *s;
	struct cm_err err = {0};
	struct kvl *k = kvl_new(&p, &err);
	if (!k) {
		fprintf(stderr, "bench_kvlink: %s\n", err.msg);
		exit(1);
	}
	return k;
}

/* Streams units for bn->seconds; returns units per second. */
static double bench_stream(struct bench *bn, struct kvl_unit *u)
{
	pthread_t th;
	atomic_store(&bn->stop, false);
	bn->received = 0;
	pthread_create(&th, NULL, receiver, bn);
	const char *to = kvl_endpoint(bn->b);
	int64_t t0 = cm_time_us(), end = t0 + (int64_t)(bn->seconds * 1e6), sent = 0;
	while (cm_time_us() < end) {
		u->index = (uint32_t)sent;
		int rc = kvl_send(bn->a, to, u, NULL);
		if (rc == CM_OK) {
			sent++;
			continue;
		}
		struct kvl_unit v;
		kvl_recv(bn->a, 1, &v, NULL); /* acks */
	}
	while (kvl_peer_unacked(bn->a, to, NULL)) {
		struct kvl_unit v;
		kvl_recv(bn->a, 1, &v, NULL);
	}
	double dt = (double)(cm_time_us() - t0) / 1e6;
	atomic_store(&bn->stop, true);
	pthread_join(th, NULL);
	return (double)sent / dt;
}

static int cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return (a > b) - (a < b);
}

/* Median µs of a unit's trip: send, receive, acknowledge, ack handled. */
static double bench_rtt(struct bench *bn, struct kvl_unit *u)
{
	enum { RUNS = 41 };
	int64_t t[RUNS];
	const char *to = kvl_endpoint(bn->b);
	for (int i = 0; i < RUNS; i++) {
		int64_t t0 = cm_time_us();
		kvl_send(bn->a, to, u, NULL);
		struct kvl_unit v;
		while (kvl_recv(bn->b, 100, &v, NULL) != 1)
			;
		kvl_ack(bn->b, &v, NULL);
		while (kvl_peer_unacked(bn->a, to, NULL))
			kvl_recv(bn->a, 100, &v, NULL);
		t[i] = cm_time_us() - t0;
	}
	qsort(t, RUNS, sizeof(t[0]), cmp_i64);
	return (double)t[RUNS / 2];
}

/* Median µs of one malloc + memcpy of n bytes, as zmq_send does with a frame. */
static double bench_memcpy(const void *src, size_t n)
{
	enum { RUNS = 21 };
	int64_t t[RUNS];
	volatile uint8_t sink = 0;
	for (int i = 0; i < RUNS; i++) {
		int64_t t0 = cm_time_us();
		uint8_t *dst = malloc(n);
		memcpy(dst, src, n);
		sink ^= dst[n / 2];
		free(dst);
		t[i] = cm_time_us() - t0;
	}
	(void)sink;
	qsort(t, RUNS, sizeof(t[0]), cmp_i64);
	return (double)t[RUNS / 2];
}

static void run(enum kern_dtype dt, int32_t n_tok, double seconds, bool json, bool first)
{
	struct bench bn = {
		.s = {.n_layer = 28, .n_kv_head = 8, .head_dim = 128, .dtype = dt},
		.n_tok = n_tok,
		.seconds = seconds,
	};
	bn.a = bench_kvl(&bn.s);
	bn.b = bench_kvl(&bn.s);
	size_t bytes = kvl_kv_bytes(&bn.s, n_tok);
	int32_t *ids = calloc((size_t)n_tok, 4), *pos = calloc((size_t)n_tok, 4);
	uint8_t *kv = malloc(bytes);
	for (size_t i = 0; i < bytes; i++)
		kv[i] = (uint8_t)(i * 2654435761u >> 13);
	struct kvl_unit u = {.req = 1, .n_tok = n_tok, .ids = ids, .pos = pos, .kv = kv};
	double rtt = bench_rtt(&bn, &u);
	double ups = bench_stream(&bn, &u);
	double cp = bench_memcpy(kv, bytes);
	struct kvl_stats st;
	kvl_stats(bn.a, &st);
	const char *name = dt == KERN_F32 ? "f32" : "f16";
	double gbs = ups * (double)bytes / 1e9;
	if (json)
		printf("%s\"%s\": {\"unit_bytes\": %zu, \"units_per_s\": %.1f, \"gb_per_s\": %.3f, "
		       "\"us_per_unit\": %.1f, \"rtt_us\": %.1f, \"memcpy_us\": %.1f, "
		       "\"stalls\": %lld}",
		       first ? "" : ", ", name, bytes, ups, gbs, 1e6 / ups, rtt, cp,
		       (long long)st.stalls);
	else
		printf("%s: unit %.2f MiB (%d tokens)  streaming %.0f units/s = %.2f GB/s "
		       "(%.0f us/unit)  round trip %.0f us  copy %.0f us  stalls %lld\n",
		       name, (double)bytes / (1 << 20), n_tok, ups, gbs, 1e6 / ups, rtt, cp,
		       (long long)st.stalls);
	free(ids);
	free(pos);
	free(kv);
	kvl_free(bn.a);
	kvl_free(bn.b);
}

int main(int argc, char **argv)
{
	double seconds = 3;
	int32_t n_tok = 25;
	bool json = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
			n_tok = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else {
			fprintf(stderr, "usage: bench_kvlink [--seconds S] [--tokens N] [--json]\n");
			return 2;
		}
	}
	if (n_tok <= 0 || n_tok > 8192 || seconds <= 0) {
		fprintf(stderr, "bench_kvlink: --tokens 1..8192, --seconds > 0\n");
		return 2;
	}
	if (json)
		printf("{");
	run(KERN_F32, n_tok, seconds, json, true);
	run(KERN_F16, n_tok, seconds, json, false);
	if (json)
		printf("}\n");
	return 0;
}
