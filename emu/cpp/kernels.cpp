// The kernels of kernels/*.cu compiled as C++ for the emulation. build.rs
// compiles this file twice: as is, and with NP_TEST_DROP_BARRIER and every
// kernel renamed with a faulty_ prefix (one barrier removed on purpose).
#include "emu.h"
#include "common.cuh"
#include "plastic_fwd.cu"
#include "plastic_bwd.cu"
#include "plastic_grad.cu"
