// The kernels' entry points, in the order the emulation's runtime indexes them
// (`NP_KERNELS` in emu/cpp/runtime.cpp). The one list, included by the CUDA
// driver (`cuda::KERNELS`), the emulation (`neuroplastic_emu::KERNELS`) and
// the emulation's build script (which renames each for the faulty build).
[
    "plastic_drive_f32",
    "plastic_fwd_f32",
    "plastic_replay_f32",
    "plastic_bwd_f32",
    "plastic_bwd_finish_f32",
    "plastic_grad_outer_f32",
    "plastic_grad_sum_f32",
    "plastic_grad_input_f32",
]
