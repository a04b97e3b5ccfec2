/* Thread pool: a fixed crew that runs one job at a time (see cm.h).
 *
 * The owner publishes a job by bumping a generation counter; workers poll it for
 * POOL_SPIN_US after their last job, then sleep on it with a futex, so a job
 * issued during a busy decode step costs a cache-line transfer, not a syscall.
 * Completion is a counter the owner polls the same way. Sleeping on either side
 * is a Dekker handshake (announce, then re-check) with sequentially consistent
 * atomics, so no wake-up is lost. Linux only (futex).
 */
#include "cm.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define POOL_SPIN_US  200 /* how long a thread polls before it sleeps; µs */
#define POOL_YIELD_US 10  /* polling time after which it yields between polls; µs */

struct pool_worker {
	struct cm_pool *pool;
	pthread_t tid;
	int ith;
};

struct cm_pool {
	int n;			     /* threads, the owner included */
	int n_started;		     /* workers created */
	struct pool_worker *workers; /* [n - 1] */
	cm_pool_fn fn;		     /* the current job; written before gen is bumped */
	void *ctx;
	atomic_bool stop;
	_Alignas(64) atomic_uint gen;  /* bumped once per job and at shutdown */
	atomic_int n_sleeping;	       /* workers sleeping (or about to) on gen */
	_Alignas(64) atomic_uint done; /* workers finished with the current job */
	atomic_int owner_sleeping;
};

static void pool_futex_wait(atomic_uint *addr, unsigned expected)
{
	syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void pool_futex_wake(atomic_uint *addr, int n)
{
	syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void pool_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* Polls *word until it differs from old, for about POOL_SPIN_US; returns its value
 * (equal to old when the time ran out). After POOL_YIELD_US it also yields the CPU
 * between polls, so that with more threads than CPUs the thread being waited for
 * gets to run. */
static unsigned pool_spin(atomic_uint *word, unsigned old)
{
	int64_t t0 = 0;
	for (unsigned i = 1;; i++) {
		unsigned v = atomic_load_explicit(word, memory_order_acquire);
		if (v != old)
			return v;
		if ((i & 63) == 0) {
			int64_t now = cm_time_us();
			if (!t0)
				t0 = now;
			else if (now - t0 > POOL_SPIN_US)
				return v;
			else if (now - t0 > POOL_YIELD_US)
				sched_yield();
		}
		pool_relax();
	}
}

/* Waits for a job newer than seen and returns its generation. */
static unsigned pool_wait_job(struct cm_pool *p, unsigned seen)
{
	unsigned g = pool_spin(&p->gen, seen);
	while (g == seen) {
		atomic_fetch_add(&p->n_sleeping, 1);
		if (atomic_load(&p->gen) == seen)
			pool_futex_wait(&p->gen, seen);
		atomic_fetch_sub(&p->n_sleeping, 1);
		g = atomic_load_explicit(&p->gen, memory_order_acquire);
	}
	return g;
}

static void *pool_main(void *arg)
{
	struct pool_worker *w = arg;
	struct cm_pool *p = w->pool;
	unsigned seen = 0;
	for (;;) {
		seen = pool_wait_job(p, seen);
		if (atomic_load_explicit(&p->stop, memory_order_acquire))
			break;
		p->fn(p->ctx, w->ith, p->n);
		unsigned d = atomic_fetch_add(&p->done, 1) + 1;
		if (d == (unsigned)(p->n - 1) && atomic_load(&p->owner_sleeping))
			pool_futex_wake(&p->done, 1);
	}
	return NULL;
}

/* The owner's side: waits until every worker has finished the current job. */
static void pool_wait_done(struct cm_pool *p)
{
	const unsigned all = (unsigned)(p->n - 1);
	unsigned d = atomic_load_explicit(&p->done, memory_order_acquire);
	while (d != all) {
		unsigned nd = pool_spin(&p->done, d);
		if (nd != d) { /* progress: keep polling */
			d = nd;
			continue;
		}
		atomic_store(&p->owner_sleeping, 1);
		d = atomic_load(&p->done);
		if (d != all)
			pool_futex_wait(&p->done, d);
		atomic_store(&p->owner_sleeping, 0);
		d = atomic_load_explicit(&p->done, memory_order_acquire);
	}
}

/* Stops and joins the started workers, then frees the pool. */
static void pool_shutdown(struct cm_pool *p)
{
	if (p->n_started) {
		atomic_store(&p->stop, true);
		atomic_fetch_add(&p->gen, 1);
		pool_futex_wake(&p->gen, INT_MAX);
		for (int i = 0; i < p->n_started; i++)
			pthread_join(p->workers[i].tid, NULL);
	}
	free(p->workers);
	free(p);
}

struct cm_pool *cm_pool_new(int n_threads)
{
	struct cm_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->n = n_threads < 1 ? 1 : n_threads;
	atomic_init(&p->stop, false);
	atomic_init(&p->gen, 0);
	atomic_init(&p->n_sleeping, 0);
	atomic_init(&p->done, 0);
	atomic_init(&p->owner_sleeping, 0);
	if (p->n == 1)
		return p;
	p->workers = calloc((size_t)p->n - 1, sizeof(*p->workers));
	if (!p->workers)
		goto out_free;
	/* workers inherit a full signal mask: signals belong to the owner's threads */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (int i = 0; i < p->n - 1; i++) {
		struct pool_worker *w = &p->workers[i];
		w->pool = p;
		w->ith = i + 1;
		if (pthread_create(&w->tid, NULL, pool_main, w) != 0)
			break;
		p->n_started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (p->n_started != p->n - 1)
		goto out_free;
	return p;

out_free:
	pool_shutdown(p);
	return NULL;
}

void cm_pool_free(struct cm_pool *pool)
{
	if (pool)
		pool_shutdown(pool);
}

int cm_pool_size(const struct cm_pool *pool)
{
	return pool->n;
}

void cm_pool_run(struct cm_pool *pool, cm_pool_fn fn, void *ctx)
{
	if (pool->n == 1) {
		fn(ctx, 0, 1);
		return;
	}
	pool->fn = fn;
	pool->ctx = ctx;
	atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
	atomic_fetch_add(&pool->gen, 1); /* seq_cst: publishes fn, ctx and done */
	if (atomic_load(&pool->n_sleeping) > 0)
		pool_futex_wake(&pool->gen, INT_MAX);
	fn(ctx, 0, pool->n);
	pool_wait_done(pool);
}
