// Pooling of encoder output and L2 normalisation, the CUDA twin of
// kernels/src/pooling.rs (`pool_cpu` + `l2_normalize_cpu`). One block per
// sequence; threads stride over the hidden dimension, so every load of a
// token's states is coalesced.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Pooling codes; kernels/src/cuda.rs passes the same numbers.
#define POOL_CLS 0
#define POOL_MEAN 1
#define POOL_MAX 2
#define POOL_MEAN_SQRT_LEN 3
#define POOL_LAST_TOKEN 4

__device__ __forceinline__ float as_f32(float v) { return v; }
__device__ __forceinline__ float as_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float as_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Sum of `value` over the block; every thread gets the total.
__device__ float block_sum(float value) {
  __shared__ float partial[32];
  __shared__ float total;
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    const unsigned warps = (blockDim.x + 31) / 32;
    value = lane < warps ? partial[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    if (lane == 0) total = value;
  }
  __syncthreads();
  return total;
}

// hidden: batch × seq × dim; mask: batch × seq (non-zero = real token);
// out: batch × dim, f32. A sequence with no kept token pools to zeros (CLS
// excepted: it takes the first token whatever the mask says), and a zero row
// stays zero when normalised, as on the CPU.
template <typename T>
__device__ void pool_normalize(const T* __restrict__ hidden, const uint32_t* __restrict__ mask,
                               float* __restrict__ out, uint32_t seq, uint32_t dim,
                               uint32_t pooling, uint32_t normalize) {
  const size_t b = blockIdx.x;
  const T* states = hidden + b * seq * dim;
  const uint32_t* keep = mask + b * seq;
  float* row = out + b * dim;

  uint32_t count = 0;
  int last = -1;
  for (uint32_t t = 0; t < seq; ++t) {
    if (keep[t] != 0) {
      ++count;
      last = (int)t;
    }
  }

  float squares = 0.0f;
  for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) {
    float value = 0.0f;
    switch (pooling) {
      case POOL_CLS:
        value = as_f32(states[d]);
        break;
      case POOL_LAST_TOKEN:
        if (last >= 0) value = as_f32(states[(size_t)last * dim + d]);
        break;
      case POOL_MAX: {
        bool any = false;
        for (uint32_t t = 0; t < seq; ++t) {
          if (keep[t] == 0) continue;
          const float v = as_f32(states[(size_t)t * dim + d]);
          value = any ? fmaxf(value, v) : v;
          any = true;
        }
        break;
      }
      default: {
        float sum = 0.0f;
        for (uint32_t t = 0; t < seq; ++t) {
          if (keep[t] != 0) sum += as_f32(states[(size_t)t * dim + d]);
        }
        if (count > 0) {
          value = sum / (pooling == POOL_MEAN ? (float)count : sqrtf((float)count));
        }
      }
    }
    row[d] = value;
    squares += value * value;
  }

  if (normalize != 0) {
    // torch.nn.functional.normalize clamps the norm at 1e-12 the same way.
    const float scale = 1.0f / fmaxf(sqrtf(block_sum(squares)), 1e-12f);
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) row[d] *= scale;
  }
}

#define POOL_NORMALIZE(SUFFIX, T)                                                          \
  extern "C" __global__ void pool_normalize_##SUFFIX(                                      \
      const T* hidden, const uint32_t* mask, float* out, uint32_t seq, uint32_t dim,       \
      uint32_t pooling, uint32_t normalize) {                                              \
    pool_normalize<T>(hidden, mask, out, seq, dim, pooling, normalize);                    \
  }

POOL_NORMALIZE(f32, float)
POOL_NORMALIZE(f16, __half)
POOL_NORMALIZE(bf16, __nv_bfloat16)
