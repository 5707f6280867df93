// Blocked pairwise distances with a per-row top-k, the CUDA twin of
// `distance::knn` in kernels/src/distance.rs: the k nearest other points of
// every point, for HDBSCAN's core distances and k-nearest-neighbour graphs.
//
// A block owns TILE rows and walks every TILE-column tile of the points. For
// each tile its 256 threads compute the TILE × TILE squared distances
// directly as sums of squared differences (no |a|² + |b|² − 2ab rounding),
// staging DEPTH-long slices of both sides in shared memory; then the first
// TILE threads, one per row, offer the tile's distances to their row's list.
// A row's list lives in global memory and is touched only by its thread; its
// k-th distance sits in a register, so once the list has filled almost no
// distance passes the first comparison.
#include <stdint.h>

#define TILE 64
#define DEPTH 16
#define THREADS 256
#define SIDE 16  // threads along one side of the tile: THREADS = SIDE²
#define PER_THREAD (TILE / SIDE)

extern "C" __global__ void __launch_bounds__(THREADS)
knn_f32(const float* __restrict__ points, uint32_t n, uint32_t dim, uint32_t k,
        uint32_t* __restrict__ indices, float* __restrict__ squared) {
  __shared__ float left[DEPTH][TILE + 1];
  __shared__ float right[DEPTH][TILE + 1];
  __shared__ float tile[TILE][TILE + 1];

  const uint32_t tid = threadIdx.x;
  const uint32_t tx = tid % SIDE, ty = tid / SIDE;
  const uint32_t row0 = blockIdx.x * TILE;

  // The thread that keeps row `row0 + tid`'s list (tid < TILE).
  const uint32_t own_row = row0 + tid;
  const bool keeps_list = tid < TILE && own_row < n;
  uint32_t* own_indices = indices + (size_t)own_row * k;
  float* own_squared = squared + (size_t)own_row * k;
  uint32_t filled = 0;
  float kth = INFINITY;

  for (uint32_t col0 = 0; col0 < n; col0 += TILE) {
    float acc[PER_THREAD][PER_THREAD];
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i)
#pragma unroll
      for (int j = 0; j < PER_THREAD; ++j) acc[i][j] = 0.0f;

    for (uint32_t d0 = 0; d0 < dim; d0 += DEPTH) {
      // TILE × DEPTH values per side, THREADS at a time, consecutive threads
      // reading consecutive dimensions of a point.
      for (uint32_t e = tid; e < TILE * DEPTH; e += THREADS) {
        const uint32_t p = e / DEPTH, q = e % DEPTH;
        const uint32_t d = d0 + q;
        const uint32_t r = row0 + p, c = col0 + p;
        left[q][p] = (r < n && d < dim) ? points[(size_t)r * dim + d] : 0.0f;
        right[q][p] = (c < n && d < dim) ? points[(size_t)c * dim + d] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < DEPTH; ++q) {
        float a[PER_THREAD], b[PER_THREAD];
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) a[i] = left[q][ty + i * SIDE];
#pragma unroll
        for (int j = 0; j < PER_THREAD; ++j) b[j] = right[q][tx + j * SIDE];
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i)
#pragma unroll
          for (int j = 0; j < PER_THREAD; ++j) {
            const float diff = a[i] - b[j];
            acc[i][j] = fmaf(diff, diff, acc[i][j]);
          }
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i)
#pragma unroll
      for (int j = 0; j < PER_THREAD; ++j) tile[ty + i * SIDE][tx + j * SIDE] = acc[i][j];
    __syncthreads();

    if (keeps_list) {
      const uint32_t cols = min(TILE, n - col0);
      for (uint32_t c = 0; c < cols; ++c) {
        const uint32_t col = col0 + c;
        const float d = tile[tid][c];
        if (col == own_row || !(d < kth || filled < k)) continue;
        // Insertion into the sorted list, nearest first.
        uint32_t slot = filled < k ? filled++ : k - 1;
        while (slot > 0 && own_squared[slot - 1] > d) {
          own_squared[slot] = own_squared[slot - 1];
          own_indices[slot] = own_indices[slot - 1];
          --slot;
        }
        own_squared[slot] = d;
        own_indices[slot] = col;
        if (filled == k) kth = own_squared[k - 1];
      }
    }
    __syncthreads();
  }
}
