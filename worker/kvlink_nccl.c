/* kvlink's NCCL transport (worker/kvlink-impl.h): two-rank communicators,
 * device staging buffers and the rendezvous helpers. Built when meson finds
 * CUDA and NCCL; otherwise kvlink_nonccl.c gives the same functions, answering
 * CM_EUNSUPPORTED, so no source file needs an #ifdef.
 *
 * Communicators are nonblocking (ncclConfig_t.blocking = 0): every NCCL call
 * is followed by polling ncclCommGetAsyncError with a deadline, so a peer that
 * vanished costs a timeout, never a hang. The engine's KV is host memory, so a
 * send copies it into a device buffer (cudaMemcpyAsync, stream idle) before
 * ncclSend, and a receive waits for ncclRecv, then copies device to host. */
#include "kvlink-impl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>
#include <nccl.h>

_Static_assert(sizeof(ncclUniqueId) == KVL_NCCL_ID_BYTES, "ncclUniqueId is 128 bytes");

struct kvl__comm {
	ncclComm_t comm;
	int device, rank;
	cudaStream_t stream;
	cudaEvent_t sent; /* recorded after each ncclSend */
	void *dev;        /* device staging buffer [dev_bytes] */
	size_t dev_bytes;
	bool broken;      /* an NCCL or CUDA call failed or timed out */
};

static void kvl__nap(void)
{
	struct timespec ts = {0, 20000};
	nanosleep(&ts, NULL);
}

int kvl__cuda_devices(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError(); /* clears the sticky "no driver" error */
		return 0;
	}
	return n;
}

bool kvl_nccl_available(void)
{
	return kvl__cuda_devices() > 0;
}

int kvl_nccl_unique_id(uint8_t id[KVL_NCCL_ID_BYTES], struct cm_err *err)
{
	ncclUniqueId u;
	ncclResult_t r = ncclGetUniqueId(&u);
	if (r != ncclSuccess)
		return cm_err_set(err, CM_EIO, "NCCL unique id: %s", ncclGetErrorString(r));
	memcpy(id, &u, sizeof(u));
	return CM_OK;
}

/* Polls c until the nonblocking call that answered r has finished. */
static int kvl__nccl_wait(struct kvl__comm *c, ncclResult_t r, int64_t timeout_ms,
			  const char *what, struct cm_err *err)
{
	int64_t end = cm_time_us() + timeout_ms * 1000;
	while (r == ncclInProgress) {
		if (cm_time_us() > end) {
			c->broken = true;
			return cm_err_set(err, CM_EPEER, "NCCL %s: no progress in %lld ms", what,
					  (long long)timeout_ms);
		}
		kvl__nap();
		if (ncclCommGetAsyncError(c->comm, &r) != ncclSuccess)
			r = ncclInternalError;
	}
	if (r != ncclSuccess) {
		c->broken = true;
		return cm_err_set(err, CM_EPEER, "NCCL %s: %s", what, ncclGetErrorString(r));
	}
	return CM_OK;
}

static int kvl__cuda_fail(struct kvl__comm *c, cudaError_t ce, const char *what,
			  struct cm_err *err)
{
	c->broken = true;
	return cm_err_set(err, CM_EPEER, "CUDA %s on device %d: %s", what, c->device,
			  cudaGetErrorString(ce));
}

int kvl__comm_new(int device, const uint8_t id[KVL_NCCL_ID_BYTES], int rank, int64_t timeout_ms,
		  struct kvl__comm **out, struct cm_err *err)
{
	struct kvl__comm *c = calloc(1, sizeof(*c));
	if (!c)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	c->device = device;
	c->rank = rank;
	int rc;
	cudaError_t ce = cudaSetDevice(device);
	if (ce == cudaSuccess)
		ce = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
	if (ce == cudaSuccess)
		ce = cudaEventCreateWithFlags(&c->sent, cudaEventDisableTiming);
	if (ce != cudaSuccess) {
		rc = kvl__cuda_fail(c, ce, "set-up", err);
		goto fail;
	}
	ncclUniqueId uid;
	memcpy(&uid, id, sizeof(uid));
	ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
	cfg.blocking = 0;
	ncclResult_t r = ncclCommInitRankConfig(&c->comm, 2, uid, rank, &cfg);
	if (!c->comm) {
		rc = cm_err_set(err, CM_EPEER, "NCCL init: %s", ncclGetErrorString(r));
		goto fail;
	}
	rc = kvl__nccl_wait(c, r, timeout_ms, "init (the other rank must join)", err);
	if (rc < 0)
		goto fail;
	*out = c;
	return CM_OK;
fail:
	kvl__comm_free(c);
	return rc;
}

void kvl__comm_free(struct kvl__comm *c)
{
	if (!c)
		return;
	cudaSetDevice(c->device);
	if (c->comm)
		ncclCommAbort(c->comm);
	if (c->dev)
		cudaFree(c->dev);
	if (c->sent)
		cudaEventDestroy(c->sent);
	if (c->stream)
		cudaStreamDestroy(c->stream);
	free(c);
}

bool kvl__comm_idle(struct kvl__comm *c)
{
	cudaSetDevice(c->device);
	cudaError_t ce = cudaEventQuery(c->sent);
	if (ce == cudaErrorNotReady)
		return false;
	if (ce != cudaSuccess)
		c->broken = true; /* the next transfer reports it */
	return true;
}

/* Grows the device staging buffer to n bytes (the stream is idle). */
static int kvl__comm_reserve(struct kvl__comm *c, size_t n, struct cm_err *err)
{
	if (n <= c->dev_bytes)
		return CM_OK;
	if (c->dev)
		cudaFree(c->dev);
	c->dev = NULL;
	c->dev_bytes = 0;
	cudaError_t ce = cudaMalloc(&c->dev, n);
	if (ce != cudaSuccess)
		return kvl__cuda_fail(c, ce, "malloc", err);
	c->dev_bytes = n;
	return CM_OK;
}

int kvl__comm_send(struct kvl__comm *c, const void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err)
{
	if (c->broken)
		return cm_err_set(err, CM_EPEER, "NCCL communicator failed earlier");
	if (!kvl__comm_idle(c))
		return cm_err_set(err, CM_EAGAIN, "NCCL send still running");
	int rc = kvl__comm_reserve(c, n, err);
	if (rc < 0)
		return rc;
	cudaError_t ce = cudaMemcpyAsync(c->dev, kv, n, cudaMemcpyHostToDevice, c->stream);
	if (ce != cudaSuccess)
		return kvl__cuda_fail(c, ce, "copy to device", err);
	ncclResult_t r = ncclSend(c->dev, n, ncclUint8, 1 - c->rank, c->comm, c->stream);
	if ((rc = kvl__nccl_wait(c, r, timeout_ms, "send", err)) < 0)
		return rc;
	ce = cudaEventRecord(c->sent, c->stream);
	if (ce != cudaSuccess)
		return kvl__cuda_fail(c, ce, "event", err);
	return CM_OK;
}

int kvl__comm_recv(struct kvl__comm *c, void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err)
{
	if (c->broken)
		return cm_err_set(err, CM_EPEER, "NCCL communicator failed earlier");
	cudaSetDevice(c->device);
	int rc = kvl__comm_reserve(c, n, err);
	if (rc < 0)
		return rc;
	ncclResult_t r = ncclRecv(c->dev, n, ncclUint8, 1 - c->rank, c->comm, c->stream);
	if ((rc = kvl__nccl_wait(c, r, timeout_ms, "receive", err)) < 0)
		return rc;
	/* wait for the transfer with a deadline before a copy that could block */
	int64_t end = cm_time_us() + timeout_ms * 1000;
	cudaError_t ce;
	while ((ce = cudaStreamQuery(c->stream)) == cudaErrorNotReady) {
		ncclResult_t ar = ncclSuccess;
		ncclCommGetAsyncError(c->comm, &ar);
		if (ar != ncclSuccess && ar != ncclInProgress)
			return kvl__nccl_wait(c, ar, 0, "receive", err);
		if (cm_time_us() > end) {
			c->broken = true;
			return cm_err_set(err, CM_EPEER, "NCCL receive: no data in %lld ms",
					  (long long)timeout_ms);
		}
		kvl__nap();
	}
	if (ce == cudaSuccess)
		ce = cudaMemcpy(kv, c->dev, n, cudaMemcpyDeviceToHost);
	if (ce != cudaSuccess)
		return kvl__cuda_fail(c, ce, "copy to host", err);
	return CM_OK;
}
