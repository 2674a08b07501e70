"""neuroplastic: differentiable plasticity and backpropamine kernels.

The numpy API mirrors the Rust crate:

* :class:`LayerConfig` fixes a plastic layer's equations and every tensor's
  shape (``param_shapes()``, ``state_shapes(batch)``);
* :class:`Engine` binds it to a device (``"cpu"``, ``"reference"``) with
  options (threads, checkpointing, truncation, finiteness checks);
* ``Engine.forward(params, inputs, state=None)`` returns ``(y, state, handle)``
  and ``Engine.backward(handle, dy, dlast=None)`` every gradient.

``neuroplastic.torch`` holds the PyTorch layers (``PlasticRNN`` and its
modulated and retroactive variants); it imports torch, this module does not.
"""

from ._native import Engine, ForwardHandle, LayerConfig, __version__, simd_features

__all__ = ["Engine", "ForwardHandle", "LayerConfig", "__version__", "simd_features"]
