// The scheduler of the emulation: runs a grid block after block, each block's
// threads as cooperative fibers (ucontext) that give up the CPU only at
// __syncthreads and at warp shuffles. Whenever a fiber blocks, the next one to
// run is drawn at random (a seeded SplitMix64) from those that can run, so
// every launch explores one of many legal interleavings, and a test that runs
// several seeds explores several. A read of shared memory that lacks its
// barrier sees another thread's write or not depending on that order, and so
// gives a wrong answer for some seed.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <vector>

#include "emu.h"
#include "common.cuh"

namespace emu {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {
enum State { READY, AT_BARRIER, AT_SHUFFLE, DONE };

struct Fiber {
  ucontext_t ctx;
  State state;
  unsigned tid;
  // Shuffle in flight: the value offered, the mask, the xor distance, and
  // the value received once every lane of the mask has arrived.
  float offer, result;
  unsigned mask;
  int dist;
};

struct Block {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  char* stacks;
  Fiber* cur;
  void (*kernel)(NpArgs);
  const NpArgs* args;
  uint64_t rng;
  const char* error;
};

thread_local Block* blk = nullptr;
const size_t kStack = 64 * 1024;

uint64_t next(uint64_t& s) {
  s += 0x9e3779b97f4a7c15ull;
  uint64_t z = s;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void entry() {
  Block* b = blk;
  b->kernel(*b->args);
  b->cur->state = DONE;
  swapcontext(&b->cur->ctx, &b->sched);
}

void yield_to_scheduler() {
  Block* b = blk;
  swapcontext(&b->cur->ctx, &b->sched);
}

// Completes the shuffles whose lanes have all arrived; returns how many
// fibers became ready, or -1 when a lane of some mask has already exited
// (a shuffle that would hang or read garbage on the GPU).
int complete_shuffles(Block* b) {
  int woke = 0;
  const unsigned n = (unsigned)b->fibers.size();
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    unsigned mask = 0;
    bool any = false;
    for (unsigned l = 0; l < 32 && w0 + l < n; ++l) {
      Fiber& f = b->fibers[w0 + l];
      if (f.state == AT_SHUFFLE) {
        mask = f.mask;
        any = true;
      }
    }
    if (!any) continue;
    bool all = true;
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1)) continue;
      if (w0 + l >= n || b->fibers[w0 + l].state == DONE) return -1;
      Fiber& f = b->fibers[w0 + l];
      if (f.state != AT_SHUFFLE || f.mask != mask) all = false;
    }
    if (!all) continue;
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1)) continue;
      Fiber& f = b->fibers[w0 + l];
      const unsigned src = l ^ (unsigned)f.dist;
      // A source lane outside the mask: undefined on the GPU; NaN here, so
      // that it cannot pass a test by luck.
      f.result = (src < 32 && (mask >> src & 1)) ? b->fibers[w0 + src].offer : NAN;
    }
    for (unsigned l = 0; l < 32; ++l)
      if (mask >> l & 1) b->fibers[w0 + l].state = READY, ++woke;
  }
  return woke;
}

// Runs one block to completion; returns an error message or null.
const char* run_block(Block* b) {
  const size_t n = b->fibers.size();
  for (size_t k = 0; k < n; ++k) {
    Fiber& f = b->fibers[k];
    f.state = READY;
    f.tid = (unsigned)k;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = &b->stacks[k * kStack];
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
  }
  std::vector<unsigned> ready;
  for (;;) {
    ready.clear();
    size_t alive = 0, barrier = 0;
    for (size_t k = 0; k < n; ++k) {
      const State s = b->fibers[k].state;
      if (s == READY) ready.push_back((unsigned)k);
      if (s != DONE) ++alive;
      if (s == AT_BARRIER) ++barrier;
    }
    if (alive == 0) return nullptr;
    if (ready.empty()) {
      const int woke = complete_shuffles(b);
      if (woke < 0) return "a warp shuffle's mask names a lane that has exited";
      if (woke > 0) continue;
      if (barrier == alive) {
        for (size_t k = 0; k < n; ++k)
          if (b->fibers[k].state == AT_BARRIER) b->fibers[k].state = READY;
        continue;
      }
      return "deadlock: threads wait at __syncthreads and at a warp shuffle that cannot complete";
    }
    Fiber& f = b->fibers[ready[next(b->rng) % ready.size()]];
    b->cur = &f;
    thread_idx = dim3{f.tid, 0, 0};
    swapcontext(&b->sched, &f.ctx);
  }
}
}  // namespace

void syncthreads() {
  blk->cur->state = AT_BARRIER;
  yield_to_scheduler();
}

float shfl_xor(unsigned mask, float v, int lane_mask) {
  Fiber* f = blk->cur;
  f->offer = v;
  f->mask = mask;
  f->dist = lane_mask;
  f->state = AT_SHUFFLE;
  yield_to_scheduler();
  return blk->cur->result;
}
}  // namespace emu

// A kernel of the emulation's own self-test (not a kernel of kernels/):
// lanes in the bit mask `nblk` call __shfl_xor_sync(flags, v, mode) on
// v = h_src[lane]; every lane writes its v to h_dst[lane].
static void emu_selftest_shuffle(NpArgs a) {
  const unsigned lane = threadIdx.x & 31;
  float v = a.h_src[threadIdx.x];
  if ((unsigned)a.nblk >> lane & 1) v = __shfl_xor_sync((unsigned)a.flags, v, a.mode);
  a.h_dst[threadIdx.x] = v;
}

extern "C" {
// The kernels of both builds (kernels.cpp).
#define NP_KERNELS(X)           \
  X(plastic_drive_f32)          \
  X(plastic_fwd_f32)            \
  X(plastic_replay_f32)         \
  X(plastic_bwd_f32)            \
  X(plastic_bwd_finish_f32)     \
  X(plastic_grad_outer_f32)     \
  X(plastic_grad_sum_f32)       \
  X(plastic_grad_input_f32)
#define NP_DECLARE(k) void k(NpArgs); void faulty_##k(NpArgs);
NP_KERNELS(NP_DECLARE)

// Runs kernel `kernel` (its index in NP_KERNELS; the faulty build when
// `faulty`) over a grid of gx × gy blocks of `threads` threads with the
// argument block `args`. Returns 0, or 1 with a message in `err` (size `cap`).
int np_emu_launch(int kernel, int faulty, unsigned gx, unsigned gy, unsigned threads, const NpArgs* args,
                  uint64_t seed, char* err, size_t cap) {
  typedef void (*Fn)(NpArgs);
#define NP_GOOD(k) k,
#define NP_BAD(k) faulty_##k,
  static const Fn good[] = {NP_KERNELS(NP_GOOD) emu_selftest_shuffle};
  static const Fn bad[] = {NP_KERNELS(NP_BAD) emu_selftest_shuffle};
  if (kernel < 0 || kernel >= (int)(sizeof(good) / sizeof(good[0])) || threads == 0 || threads % 32 != 0 ||
      threads > 1024) {
    snprintf(err, cap, "bad launch: kernel %d, %u threads", kernel, threads);
    return 1;
  }
  // The fibers' stacks are kept per OS thread and reused by every launch
  // (zero-filling 64 KiB per thread each launch cost more than the kernels).
  static thread_local std::vector<char> stacks;
  if (stacks.size() < threads * emu::kStack) stacks.resize(threads * emu::kStack);
  emu::Block b;
  b.fibers.resize(threads);
  b.stacks = stacks.data();
  b.kernel = faulty ? bad[kernel] : good[kernel];
  b.args = args;
  b.rng = seed;
  emu::Block* saved = emu::blk;
  emu::blk = &b;
  emu::grid_dim = dim3{gx, gy, 1};
  emu::block_dim = dim3{threads, 1, 1};
  const char* e = nullptr;
  for (unsigned y = 0; y < gy && !e; ++y) {
    for (unsigned x = 0; x < gx && !e; ++x) {
      emu::block_idx = dim3{x, y, 0};
      e = emu::run_block(&b);
    }
  }
  emu::blk = saved;
  if (e) {
    snprintf(err, cap, "%s", e);
    return 1;
  }
  return 0;
}
}
