"""neuroplastic: differentiable plasticity and backpropamine kernels.

The numpy API mirrors the Rust crate:

* :class:`LayerConfig` fixes a plastic layer's equations and every tensor's
  shape (``param_shapes()``, ``state_shapes(batch)``);
* :class:`Engine` binds it to a device (``"cpu"``, ``"reference"``) with
  options (threads, checkpointing, truncation, finiteness checks);
* ``Engine.forward(params, inputs, state=None)`` returns ``(y, state, handle)``
  and ``Engine.backward(handle, dy, dlast=None)`` every gradient;
* ``Engine.stepper(params, batch, steps, state=None)`` runs episodes one step
  at a time (``step(x)`` → ``y`` of that step; ``finish()`` → what ``forward``
  returns for the recorded inputs), for closed loops;
* ``meta_grad(params, trajectory, inner_lr=…, …)`` returns the meta-loss of
  OML, ANML or MAML-style meta-learning (S inner SGD steps per task, then the
  loss on an outer batch) and its exact gradient for every tensor;
  ``meta_loss(params, trajectory, …)`` the same loss alone, bit for bit, for
  a fraction of the time and memory (validation).

``neuroplastic.torch`` holds the PyTorch layers (``PlasticRNN`` and its
modulated and retroactive variants) and ``meta_loss``, the meta-loss as an
autograd function; it imports torch, this module does not.
"""

from ._native import Engine, ForwardHandle, LayerConfig, Stepper, __version__, meta_grad, meta_loss, simd_features

__all__ = ["Engine", "ForwardHandle", "LayerConfig", "Stepper", "__version__", "meta_grad", "meta_loss", "simd_features"]
