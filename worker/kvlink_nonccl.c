/* kvlink's NCCL functions in a build without CUDA/NCCL (meson picks this file
 * instead of kvlink_nccl.c): NCCL is unavailable and every call says so. */
#include "kvlink-impl.h"

#include <string.h>

int kvl__cuda_devices(void)
{
	return -1;
}

bool kvl_nccl_available(void)
{
	return false;
}

int kvl_nccl_unique_id(uint8_t id[KVL_NCCL_ID_BYTES], struct cm_err *err)
{
	memset(id, 0, KVL_NCCL_ID_BYTES);
	return cm_err_set(err, CM_EUNSUPPORTED, "this build has no CUDA/NCCL");
}

int kvl__comm_new(int device, const uint8_t id[KVL_NCCL_ID_BYTES], int rank, int64_t timeout_ms,
		  struct kvl__comm **out, struct cm_err *err)
{
	(void)device, (void)id, (void)rank, (void)timeout_ms;
	*out = NULL;
	return cm_err_set(err, CM_EUNSUPPORTED, "this build has no CUDA/NCCL");
}

void kvl__comm_free(struct kvl__comm *c)
{
	(void)c;
}

bool kvl__comm_idle(struct kvl__comm *c)
{
	(void)c;
	return true;
}

int kvl__comm_send(struct kvl__comm *c, const void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err)
{
	(void)c, (void)kv, (void)n, (void)timeout_ms;
	return cm_err_set(err, CM_EUNSUPPORTED, "this build has no CUDA/NCCL");
}

int kvl__comm_recv(struct kvl__comm *c, void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err)
{
	(void)c, (void)kv, (void)n, (void)timeout_ms;
	return cm_err_set(err, CM_EUNSUPPORTED, "this build has no CUDA/NCCL");
}
