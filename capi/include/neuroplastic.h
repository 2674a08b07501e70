/* neuroplastic: the C interface. Tensors are flat row-major float arrays with their length in elements; see README.md, "Use it from C". */

#ifndef NEUROPLASTIC_H
#define NEUROPLASTIC_H

/* Generated from capi/src/lib.rs by cbindgen; do not edit. Regenerate: NEUROPLASTIC_BLESS=1 cargo test --release -p neuroplastic-capi --test c_abi */

#include <stddef.h>
#include <stdint.h>

// `NpLayerConfig.rule`: decaying Hebbian trace.
#define NP_RULE_HEBB 0

// `NpLayerConfig.rule`: Oja's rule.
#define NP_RULE_OJA 1

// `NpLayerConfig.rule`: neuromodulated ("backpropamine").
#define NP_RULE_MODULATED 2

// `NpLayerConfig.rule`: neuromodulated with an eligibility trace.
#define NP_RULE_RETROACTIVE 3

// `NpLayerConfig.topology`: `x = h_{t−1}`, inputs enter through `input_map`.
#define NP_TOPOLOGY_RECURRENT 0

// `NpLayerConfig.topology`: `x = the input`, `I = X`.
#define NP_TOPOLOGY_FEED_FORWARD 1

// `NpLayerConfig.input_map`: `u = U · input` with learned `U (N, X)`.
#define NP_INPUT_LINEAR 0

// `NpLayerConfig.input_map`: `u = input` (`X = N`).
#define NP_INPUT_DIRECT 1

// `NpLayerConfig.alpha`: one `α` per connection, `(N, I)`.
#define NP_ALPHA_CONNECTION 0

// `NpLayerConfig.alpha`: one `α` per neuron, `(N,)`.
#define NP_ALPHA_NEURON 1

// `NpLayerConfig.alpha`: one `α`, `(1,)`.
#define NP_ALPHA_SCALAR 2

// `NpLayerConfig.activation` and `mod_activation`: tanh.
#define NP_ACT_TANH 0

// `NpLayerConfig.activation` and `mod_activation`: identity.
#define NP_ACT_IDENTITY 1

// `NpLayerConfig.mod_activation` only: the logistic sigmoid.
#define NP_ACT_SIGMOID 2

// `NpLayerConfig.eta`: η (or η_e) is learned.
#define NP_ETA_LEARNED 0

// `NpLayerConfig.eta`: η (or η_e) is fixed (its gradient is zero).
#define NP_ETA_FIXED 1

// `np_layer_new` device: the f64 reference (slow; the oracle).
#define NP_DEVICE_REFERENCE 0

// `np_layer_new` device: the SIMD CPU backend.
#define NP_DEVICE_CPU 1

// `np_layer_new` device: CUDA (reports `NP_ERR_UNAVAILABLE` in this build).
#define NP_DEVICE_CUDA 2

// `NpOptions.checkpoint`: about `√T` snapshots (the default).
#define NP_CHECKPOINT_AUTO 0

// `NpOptions.checkpoint`: a snapshot every `checkpoint_every` steps.
#define NP_CHECKPOINT_EVERY 1

// `NpOptions.checkpoint`: keep every step's traces.
#define NP_CHECKPOINT_ALL 2

// `NpOptions.truncation`: back-propagate through the whole episode.
#define NP_TRUNCATE_NONE 0

// `NpOptions.truncation`: only through the last `truncation_k` steps.
#define NP_TRUNCATE_LAST 1

// `NpOptions.truncation`: in windows of `truncation_k` steps.
#define NP_TRUNCATE_WINDOWS 2

// The number of parameter tensors ([`np_layer_param_tensor`] indices).
#define NP_PARAM_TENSORS 10

// `NpMeta.loss`: mean squared error, `Σ_o (ŷ − y)²` averaged over rows.
#define NP_META_MSE 0

// `NpMeta.loss`: softmax cross-entropy; targets are class indices (as floats).
#define NP_META_XENT 1

// `NpMeta.order`: exact, through every inner gradient (Hessian–vector products).
#define NP_META_SECOND 0

// `NpMeta.order`: every inner gradient taken as a constant.
#define NP_META_FIRST 1

// A forward pass's result: outputs, final state and what the backward pass
// needs (with a copy of the inputs and parameters it ran with). Opaque; made
// by [`np_forward`], freed by [`np_forward_free`].
typedef struct NpForward NpForward;

// A plastic layer: its configuration, its device and its parameters.
// Opaque; made by [`np_layer_new`], freed by [`np_layer_free`].
typedef struct NpLayer NpLayer;

// A status code: `NP_OK` (0) or one of the `NP_ERR_*` codes.
typedef int32_t NpStatus;

// Everything that fixes a layer's shapes and equations. Fill it with
// [`np_layer_config_init`], then change fields.
typedef struct NpLayerConfig {
  // `NP_RULE_*`.
  uint32_t rule;
  // `NP_TOPOLOGY_*`.
  uint32_t topology;
  // `NP_INPUT_*` (recurrent layers).
  uint32_t input_map;
  // `NP_ALPHA_*`.
  uint32_t alpha;
  // `NP_ACT_TANH` or `NP_ACT_IDENTITY`.
  uint32_t activation;
  // `N`, the number of neurons.
  size_t n;
  // `X`, input features per step (feed-forward: `I`).
  size_t inputs;
  // 1: the layer has a bias `b (N,)`; 0: it has none.
  uint32_t bias;
  // `NP_ETA_*`.
  uint32_t eta;
  // `K`, modulator outputs (modulated rules).
  size_t mod_k;
  // `NP_ACT_*`, the modulator's non-linearity.
  uint32_t mod_activation;
  // 1: the modulator has a bias `c (K,)`.
  uint32_t mod_bias;
  // 1: the fan-out `F (K, N)` is learned (else all ones).
  uint32_t mod_fanout;
  // 1: the fan-out has a bias `g (N,)`.
  uint32_t mod_fanout_bias;
  // `c_max`, the clip of the modulated rules.
  double clip;
} NpLayerConfig;

// Execution options. Fill them with [`np_options_init`], then change fields.
typedef struct NpOptions {
  // CPU threads: 0 uses a shared global pool, `n` a private pool of `n`.
  // Results are bitwise the same for any number.
  size_t threads;
  // `NP_CHECKPOINT_*`.
  uint32_t checkpoint;
  // The interval of `NP_CHECKPOINT_EVERY` (at least 1).
  size_t checkpoint_every;
  // `NP_TRUNCATE_*`.
  uint32_t truncation;
  // `K` of `NP_TRUNCATE_LAST` and `NP_TRUNCATE_WINDOWS` (at least 1).
  size_t truncation_k;
  // 1: check every input for NaN and infinity (an error names the first).
  uint32_t check_finite;
} NpOptions;

// A meta-learner for [`np_meta_grad`] and [`np_meta_loss`]: its options
// and the widths of its three stacks of dense layers. A stack's widths are
// `[in, h1, …, out]` (`len − 1` layers); NULL with length 0 is an absent
// stack (the RLN is then the identity; without an NM there is no gate).
// The PLN (its weights are the fast weights θ) is required.
typedef struct NpMeta {
  // `NP_META_MSE` or `NP_META_XENT`: the inner and the outer loss.
  uint32_t loss;
  // `NP_META_SECOND` or `NP_META_FIRST`.
  uint32_t order;
  // K > 0: differentiate only the last K inner steps; 0: all.
  size_t truncate;
  // c > 0: clamp each inner-gradient element to ±c; 0: no clamp.
  double clamp;
  // The PLN layer whose input the NM's sigmoid gates (0: the PLN's input).
  size_t gate_at;
  // 1: β is learned (the last parameter, and it gets a gradient); 0: fixed at `inner_lr`.
  uint32_t learn_lr;
  // β when it is fixed (ignored when learned).
  double inner_lr;
  // Representation network widths `[D, …]` (ReLU after every layer), or NULL.
  const size_t *rln;
  // Length of `rln` (0, or at least 2).
  size_t rln_len;
  // Prediction network widths `[in, …, O]` (ReLU between layers).
  const size_t *pln;
  // Length of `pln` (at least 2).
  size_t pln_len;
  // Neuromodulatory network widths `[D, …, width of PLN layer gate_at's input]`, or NULL.
  const size_t *nm;
  // Length of `nm` (0, or at least 2).
  size_t nm_len;
} NpMeta;

// Success.
#define NP_OK 0

// A required pointer was NULL (the message names the argument).
#define NP_ERR_NULL 1

// An argument has a wrong value, length or shape (the message names it).
#define NP_ERR_INVALID 2

// The device cannot run here (the message says why).
#define NP_ERR_UNAVAILABLE 3

// An internal error (a caught panic); the message has its text.
#define NP_ERR_PANIC 4

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The library's version, e.g. `"0.1.0"` (a static string).
const char *np_version(void);

// The message of the last failing call on this thread (empty if none). The
// pointer stays valid until the next failing call on this thread.
const char *np_last_error(void);

// Fills `out` with the defaults for a layer of `n` neurons: a recurrent
// layer with `inputs` external inputs through learned weights `U`, or a
// feed-forward layer with `I = inputs`; `α` per connection, tanh, no bias,
// learned η, a modulator of `K = 1` with tanh and a bias, `c_max = 1`.
//
// # Safety
// `out` must be NULL or point to a writable `NpLayerConfig`.
NpStatus np_layer_config_init(struct NpLayerConfig *out,
                              uint32_t rule,
                              uint32_t topology,
                              size_t n,
                              size_t inputs);

// Fills `out` with the default options: the global thread pool,
// `NP_CHECKPOINT_AUTO`, no truncation, no finiteness check.
//
// # Safety
// `out` must be NULL or point to a writable `NpOptions`.
NpStatus np_options_init(struct NpOptions *out);

// Creates a layer for `config` on `device` (`NP_DEVICE_*`; `ordinal` picks
// the GPU of `NP_DEVICE_CUDA` and is ignored otherwise) with `options`
// (NULL: the defaults). Its parameters start at zero (set them with
// [`np_layer_set_params`]). On success `*out` is the new layer.
//
// # Safety
// `config` must be NULL or point to an `NpLayerConfig`, `options` NULL or
// to an `NpOptions`, `out` NULL or to a writable `NpLayer *`.
NpStatus np_layer_new(const struct NpLayerConfig *config,
                      uint32_t device,
                      size_t ordinal,
                      const struct NpOptions *options,
                      struct NpLayer **out);

// Frees a layer (NULL is a no-op). Forward results made by it stay valid
// handles, but can no longer be back-propagated through it.
//
// # Safety
// `layer` must be NULL or a pointer returned by `np_layer_new`, not yet freed.
void np_layer_free(struct NpLayer *layer);

// The number of floats of the layer's parameters (all ten tensors).
//
// # Safety
// `layer` must be NULL or a live layer, `out` NULL or writable.
NpStatus np_layer_param_len(const struct NpLayer *layer, size_t *out);

// Where parameter tensor `index` (0..`NP_PARAM_TENSORS`) lies in the flat
// parameter array: its name (a static string: `"w"`, `"alpha"`, `"eta"`,
// `"eta_e"`, `"u"`, `"b"`, `"mod.v"`, `"mod.c"`, `"mod.fanout"`,
// `"mod.fanout_bias"`), offset and length in floats (0 when unused). Any of
// `name`, `offset`, `len` may be NULL.
//
// # Safety
// `layer` must be NULL or a live layer; the outputs NULL or writable.
NpStatus np_layer_param_tensor(const struct NpLayer *layer,
                               size_t index,
                               const char **name,
                               size_t *offset,
                               size_t *len);

// Sets the layer's parameters from the flat array `params` of `len` floats
// (see [`np_layer_param_len`] and [`np_layer_param_tensor`]). η and η_e must
// lie in `[0, 1]`.
//
// # Safety
// `layer` must be NULL or a live layer; `params` NULL or `len` readable floats.
NpStatus np_layer_set_params(struct NpLayer *layer, const float *params, size_t len);

// Copies the layer's parameters into `out` (`len` floats, the flat layout).
//
// # Safety
// `layer` must be NULL or a live layer; `out` NULL or `len` writable floats.
NpStatus np_layer_get_params(const struct NpLayer *layer, float *out, size_t len);

// The number of floats of a state of `batch` episodes: `h (B, N)`
// (recurrent) + `hebb (B, N, I)` + `elig (B, N, I)` (Retroactive).
//
// # Safety
// `layer` must be NULL or a live layer, `out` NULL or writable.
NpStatus np_layer_state_len(const struct NpLayer *layer, size_t batch, size_t *out);

// Runs the layer over `batch` episodes of `steps` steps: `inputs` is
// `(B, T, X)` (`inputs_len` floats); `init` the state before the first step
// (`init_len` floats, the state layout), or NULL for zeros. On success
// `*out` is the result, to read with [`np_forward_y`] and
// [`np_forward_last`] and to back-propagate with [`np_backward`].
//
// # Safety
// `layer` NULL or live; `inputs` NULL or `inputs_len` readable floats;
// `init` NULL or `init_len` readable floats; `out` NULL or writable.
NpStatus np_forward(struct NpLayer *layer,
                    const float *inputs,
                    size_t inputs_len,
                    size_t batch,
                    size_t steps,
                    const float *init,
                    size_t init_len,
                    struct NpForward **out);

// Frees a forward result (NULL is a no-op).
//
// # Safety
// `fwd` must be NULL or a pointer returned by `np_forward`, not yet freed.
void np_forward_free(struct NpForward *fwd);

// Copies the outputs `y` `(B, T, N)` into `out` (`len` floats).
//
// # Safety
// `fwd` NULL or live; `out` NULL or `len` writable floats.
NpStatus np_forward_y(const struct NpForward *fwd, float *out, size_t len);

// Copies the state after the last step into `out` (`len` floats, the state
// layout).
//
// # Safety
// `fwd` NULL or live; `out` NULL or `len` writable floats.
NpStatus np_forward_last(const struct NpForward *fwd, float *out, size_t len);

// Back-propagates through the episodes of `fwd` (made by this layer), with
// the parameters and inputs `fwd` ran with.
//
// `dy`: dL/dy `(B, T, N)` (`dy_len` floats); `dlast`: dL/d(final state) in
// the state layout, or NULL for zero. Writes dL/d(parameters) into
// `grad_params` (the flat parameter layout; a fixed η gets 0), dL/d(inputs)
// `(B, T, X)` into `grad_inputs` and dL/d(initial state) into `grad_init`
// (the state layout); each output may be NULL (with length 0) when not
// wanted. Honours the layer's truncation option.
//
// # Safety
// `layer`, `fwd` NULL or live; every array NULL or as long as its length
// says (readable inputs, writable outputs, outputs not overlapping).
NpStatus np_backward(struct NpLayer *layer,
                     const struct NpForward *fwd,
                     const float *dy,
                     size_t dy_len,
                     const float *dlast,
                     size_t dlast_len,
                     float *grad_params,
                     size_t grad_params_len,
                     float *grad_inputs,
                     size_t grad_inputs_len,
                     float *grad_init,
                     size_t grad_init_len);

// Fills `*out` with the number of parameters of `meta`: every RLN, PLN and
// NM layer's weight `(out, in)` then bias `(out)`, stack after stack, and β
// last when it is learned. That is the layout of `params` and `grad` in
// [`np_meta_grad`].
//
// # Safety
// `meta` NULL or valid, its width pointers NULL or readable for their
// lengths; `out` NULL or writable.
NpStatus np_meta_param_len(const struct NpMeta *meta, size_t *out);

// The meta-loss of OML, ANML or MAML-style meta-learning and its gradient
// for every parameter. For each of the `p` tasks, the PLN's weights start
// at θ₀ and take `s` SGD steps `θ ← θ − β·clamp(∇_θ ℓ(θ; inner batch k))`;
// then the loss on the task's outer batch at the final θ. `*loss` is the
// mean over tasks; `grad` (the layout of `params`, see
// [`np_meta_param_len`]) its gradient, exact (or first order, or truncated,
// as `meta` says). `device` is `NP_DEVICE_CPU` (f32, tasks in parallel) or
// `NP_DEVICE_REFERENCE` (f64 inside).
//
// Tensors, row-major: `inner_x (p, s, bi, D)`, `inner_y (p, s, bi, O)` for
// `NP_META_MSE` or `(p, s, bi)` class indices for `NP_META_XENT`,
// `outer_x (p, bo, D)`, `outer_y (p, bo, O)` or `(p, bo)`; `D` is the first
// width of the RLN (or of the PLN without one), `O` the PLN's last.
//
// # Safety
// `meta` as in [`np_meta_param_len`]; every array NULL or readable (or,
// for `grad`, writable and not aliased) for its length; `loss` NULL or
// writable.
NpStatus np_meta_grad(const struct NpMeta *meta,
                      uint32_t device,
                      const float *params,
                      size_t params_len,
                      size_t p,
                      size_t s,
                      size_t bi,
                      size_t bo,
                      const float *inner_x,
                      size_t inner_x_len,
                      const float *inner_y,
                      size_t inner_y_len,
                      const float *outer_x,
                      size_t outer_x_len,
                      const float *outer_y,
                      size_t outer_y_len,
                      double *loss,
                      float *grad,
                      size_t grad_len);

// The meta-loss alone: what [`np_meta_grad`] writes to `*loss`, bit for
// bit on the same device, without the gradient, for a fraction of its time
// and memory (the inner steps run forward; nothing is kept for a
// backward). The arguments are [`np_meta_grad`]'s without `grad`, checked
// the same way with the same messages; `meta.order` and `meta.truncate`
// are checked but do not change the value.
//
// # Safety
// As [`np_meta_grad`].
NpStatus np_meta_loss(const struct NpMeta *meta,
                      uint32_t device,
                      const float *params,
                      size_t params_len,
                      size_t p,
                      size_t s,
                      size_t bi,
                      size_t bo,
                      const float *inner_x,
                      size_t inner_x_len,
                      const float *inner_y,
                      size_t inner_y_len,
                      const float *outer_x,
                      size_t outer_x_len,
                      const float *outer_y,
                      size_t outer_y_len,
                      double *loss);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* NEUROPLASTIC_H */
