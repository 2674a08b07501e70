// The CUDA dialect the kernels in kernels/ use, defined for the CPU: every
// thread of a block is a fiber (ucontext) and the fibers switch only at
// __syncthreads and at warp shuffles, resuming in a seeded random order (see
// runtime.cpp and kernels/README.md, "CPU emulation", for what this can and
// cannot catch). Included before the kernel sources in kernels.cpp.
#ifndef NP_EMU_H
#define NP_EMU_H

#include <math.h>
#include <stdint.h>

struct dim3 {
  unsigned x, y, z;
};

namespace emu {
// The running fiber's coordinates: set by the scheduler before every switch.
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
void syncthreads();
float shfl_xor(unsigned mask, float v, int lane_mask);
}  // namespace emu

// Kernels become plain functions; helpers get internal linkage so that the
// two builds of the kernels (with and without a barrier) do not share them.
#define __global__
#define __device__
#define __forceinline__ static inline
// Blocks run one after the other, so a function-static array serves as the
// block's shared memory (thread_local: tests emulate launches on several OS
// threads at once).
#define __shared__ static thread_local
#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __syncthreads() emu::syncthreads()
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor((mask), (v), (o))

#endif
