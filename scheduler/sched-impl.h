/* scheduler: declarations shared by its files. */
#ifndef TANDEM_SCHED_IMPL_H
#define TANDEM_SCHED_IMPL_H

#include "sched.h"

/* The engine's budgets when a request leaves them 0 (worker/wk.h). */
#define SCHED_UNIT_BUDGET_DEFAULT  64
#define SCHED_FINAL_BUDGET_DEFAULT 256

#endif
