# Type stubs of the Rust extension (python/src/lib.rs).
from typing import Dict, Literal, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Union[np.float32, np.float64]]
StateDict = Dict[str, Array]  # "h", "hebb", "elig": those the configuration uses

__version__: str

def simd_features() -> list[str]: ...

class LayerConfig:
    def __init__(
        self,
        rule: Literal["hebb", "oja", "modulated", "retroactive"],
        n: int,
        inputs: int,
        *,
        topology: Literal["recurrent", "feed_forward"] = "recurrent",
        input_map: Literal["linear", "direct"] = "linear",
        alpha: Literal["connection", "neuron", "scalar"] = "connection",
        activation: Literal["tanh", "identity"] = "tanh",
        bias: bool = False,
        eta: Literal["learned", "fixed"] = "learned",
        modulators: int = 1,
        modulator: Literal["tanh", "sigmoid", "identity"] = "tanh",
        modulator_bias: bool = True,
        fanout: bool = False,
        fanout_bias: bool = False,
        clip: float = 1.0,
    ) -> None: ...
    rule: str
    n: int
    inputs: int
    pre: int
    topology: str
    input_map: str
    alpha: str
    activation: str
    bias: bool
    eta: str
    modulators: int
    modulator: str
    modulator_bias: bool
    fanout: bool
    fanout_bias: bool
    clip: float
    def param_shapes(self) -> Dict[str, Tuple[int, ...]]: ...
    def state_shapes(self, batch: int) -> Dict[str, Tuple[int, ...]]: ...

class ForwardHandle:
    saved_bytes: int
    dtype: str
    shape: Tuple[int, int]

class Engine:
    def __init__(
        self,
        config: LayerConfig,
        device: str = "cpu",
        *,
        threads: Optional[int] = None,
        checkpoint: Union[Literal["auto", "all"], int, None] = None,
        truncate: Optional[Tuple[Literal["last", "windows"], int]] = None,
        check_finite: bool = False,
    ) -> None: ...
    config: LayerConfig
    device: str
    threads: Optional[int]
    checkpoint: Union[str, int]
    truncate: Optional[Tuple[str, int]]
    check_finite: bool
    def forward(
        self, params: Dict[str, Array], inputs: Array, state: Optional[StateDict] = None
    ) -> Tuple[Array, StateDict, ForwardHandle]: ...
    def backward(self, handle: ForwardHandle, dy: Array, dlast: Optional[StateDict] = None) -> Dict[str, object]: ...
    def stepper(
        self, params: Dict[str, Array], batch: int, steps: int, state: Optional[StateDict] = None
    ) -> Stepper: ...

class Stepper:
    shape: Tuple[int, int]
    done: int
    dtype: str
    def step(self, x: Array) -> Array: ...
    def finish(self) -> Tuple[Array, StateDict, ForwardHandle]: ...

def meta_grad(
    params: Dict[str, Array],
    trajectory: Dict[str, Array],
    *,
    inner_lr: Optional[float] = None,
    loss: Literal["mse", "xent"] = "mse",
    order: Literal["second", "first"] = "second",
    truncate: int = 0,
    clamp: float = 0.0,
    gate_at: int = 0,
    device: str = "cpu",
    threads: Optional[int] = None,
) -> Tuple[float, Dict[str, Array]]: ...

def meta_loss(
    params: Dict[str, Array],
    trajectory: Dict[str, Array],
    *,
    inner_lr: Optional[float] = None,
    loss: Literal["mse", "xent"] = "mse",
    order: Literal["second", "first"] = "second",
    truncate: int = 0,
    clamp: float = 0.0,
    gate_at: int = 0,
    device: str = "cpu",
    threads: Optional[int] = None,
) -> float: ...
