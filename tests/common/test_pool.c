/* common: the thread pool. */
#include "common/cm.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define MAX_T 8

struct seen {
	atomic_int count[MAX_T];
	atomic_int bad_nth;
	pthread_t who[MAX_T];
	long sum; /* written by thread 0 only */
};

static void record(void *ctx, int ith, int nth)
{
	struct seen *s = ctx;
	if (ith < 0 || ith >= MAX_T || nth < 1 || ith >= nth) {
		atomic_fetch_add(&s->bad_nth, 1);
		return;
	}
	atomic_fetch_add(&s->count[ith], 1);
	s->who[ith] = pthread_self();
}

Test(pool, every_index_runs_once_per_job_and_caller_is_zero)
{
	for (int n = 1; n <= 5; n++) {
		struct cm_pool *p = cm_pool_new(n);
		cr_assert_not_null(p);
		cr_assert_eq(cm_pool_size(p), n);
		struct seen s;
		memset(&s, 0, sizeof(s));
		const int jobs = 2000;
		for (int j = 0; j < jobs; j++)
			cm_pool_run(p, record, &s);
		cr_assert_eq(atomic_load(&s.bad_nth), 0);
		for (int i = 0; i < n; i++)
			cr_assert_eq(atomic_load(&s.count[i]), jobs, "n %d ith %d", n, i);
		for (int i = n; i < MAX_T; i++)
			cr_assert_eq(atomic_load(&s.count[i]), 0);
		cr_assert(pthread_equal(s.who[0], pthread_self()), "thread 0 must be the caller");
		for (int i = 1; i < n; i++)
			cr_assert(!pthread_equal(s.who[i], pthread_self()));
		cm_pool_free(p);
	}
}

struct partial {
	long part[MAX_T];
	const int *data;
	int len;
};

static void sum_share(void *ctx, int ith, int nth)
{
	struct partial *s = ctx;
	long acc = 0;
	for (int i = s->len * ith / nth; i < s->len * (ith + 1) / nth; i++)
		acc += s->data[i];
	s->part[ith] = acc;
}

Test(pool, results_written_by_workers_are_visible_after_run)
{
	static int data[100000];
	long want = 0;
	for (int i = 0; i < 100000; i++) {
		data[i] = i % 977;
		want += data[i];
	}
	struct cm_pool *p = cm_pool_new(3);
	cr_assert_not_null(p);
	for (int rep = 0; rep < 500; rep++) {
		struct partial s = {.data = data, .len = 100000 - rep};
		cm_pool_run(p, sum_share, &s);
		long got = s.part[0] + s.part[1] + s.part[2];
		long w = want;
		for (int i = 100000 - rep; i < 100000; i++)
			w -= data[i];
		cr_assert_eq(got, w, "rep %d", rep);
	}
	cm_pool_free(p);
}

Test(pool, wakes_after_workers_fall_asleep)
{
	struct cm_pool *p = cm_pool_new(2);
	cr_assert_not_null(p);
	struct seen s;
	memset(&s, 0, sizeof(s));
	for (int j = 0; j < 5; j++) {
		usleep(20000); /* well past the spin window: workers sleep on the futex */
		cm_pool_run(p, record, &s);
	}
	cr_assert_eq(atomic_load(&s.count[0]), 5);
	cr_assert_eq(atomic_load(&s.count[1]), 5);
	cm_pool_free(p);
}

static void slow_worker(void *ctx, int ith, int nth)
{
	(void)nth;
	if (ith == 1)
		usleep(5000); /* the caller outwaits its spin window and sleeps */
	record(ctx, ith, nth);
}

Test(pool, caller_waits_for_a_slow_worker)
{
	struct cm_pool *p = cm_pool_new(2);
	cr_assert_not_null(p);
	struct seen s;
	memset(&s, 0, sizeof(s));
	for (int j = 0; j < 3; j++) {
		cm_pool_run(p, slow_worker, &s);
		cr_assert_eq(atomic_load(&s.count[1]), j + 1);
	}
	cm_pool_free(p);
}

Test(pool, more_threads_than_cpus_and_free_without_jobs)
{
	struct cm_pool *p = cm_pool_new(2 * cm_cpu_count() + 1);
	cr_assert_not_null(p);
	cm_pool_free(p);
	p = cm_pool_new(2 * cm_cpu_count() + 1);
	struct seen s;
	memset(&s, 0, sizeof(s));
	for (int j = 0; j < 200; j++)
		cm_pool_run(p, record, &s);
	int n = cm_pool_size(p) < MAX_T ? cm_pool_size(p) : MAX_T;
	for (int i = 0; i < n; i++)
		cr_assert_eq(atomic_load(&s.count[i]), 200);
	cm_pool_free(p);
	cm_pool_free(NULL);
	p = cm_pool_new(0);
	cr_assert_not_null(p);
	cr_assert_eq(cm_pool_size(p), 1);
	cm_pool_free(p);
}
