"""Several trials in one program: N compiled Keras models of one shape trained by one (vmapped)
epoch program of the device loop (train.loop device, Keras' JAX backend).

Each member is a network built and compiled for its own trial. The members' trainable,
non-trainable (batch-norm statistics, dropout and augmentation seeds) and optimizer variables
(the iteration count, a constant learning rate, moments) are stacked along a leading axis, and
device_loop's epoch (its steps, its validation) is `jax.vmap`ped over the stack, traced once
through the first member's model. What a trial sets without a variable is made a vmapped array
too: the learning-rate schedule's numbers, the dropout rate, the L1/L2 strengths, AdamW's weight
decay, and the constants the builder fits on each trial's own training sample (the input
standardisation, the exposure scale). During the trace those attributes of the first member's
objects hold the member's traced value (`Traced` where Keras compares them with a number: the
comparison is made on every member's value and must come out the same); everything else about
the networks (layers, their settings, variable shapes, optimizer, loss, batch size) must be
equal, which `fusion_error` checks before anything is traced.

How the members' steps share the program (strategy): `vmap` batches them (a convolution over
the stack becomes one grouped convolution, what a GPU runs well), `unroll` puts one copy of the
step per member in the program (plain convolutions one after another: on a CPU XLA runs a
grouped convolution at a third of their speed, benchmarks/bench_fused.py). Either way one
dispatch serves every member.

Each member keeps its own evaluator and callbacks (epoch log, pruning, stop request): after each
epoch its slice of the state is written back to its own model and its hooks see the epoch as
after fit_on_device's. A member whose hook raises (pruned, TrialFailed on a NaN) or that stops
(early stopping, its last epoch) leaves the stack: the others' arrays are sliced out unchanged
and go on (a smaller stack traces once more). Lanes of a vmap never mix, so a member's numbers
do not depend on the others' (equal to the member trained alone by fit_on_device to float
rounding: tests/training/test_fused.py).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from hpo.inference.layers import ExposureScale
from hpo.inference.layers import LogExposure
from hpo.training.device_data import DeviceData
from hpo.training.device_loop import Ahead
from hpo.training.device_loop import DeviceEvaluator
from hpo.training.device_loop import epoch_program
from hpo.training.device_loop import hand_over
from hpo.training.device_loop import read_state
from hpo.training.device_loop import resolve_dispatch
from hpo.training.device_loop import resolve_pipeline

# Layer attributes a member may set to its own number (or array): they enter the program as
# vmapped arrays. Their get_config keys are left out of the equality check.
LAYER_HYPERS: dict[type, tuple[str, ...]] = {
    keras.layers.Dropout: ("rate",),
    keras.layers.Normalization: ("mean", "variance"),
    ExposureScale: ("ref_s",),
    LogExposure: ("mean", "std"),
}
REGULARIZER_KEYS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer")


@dataclass(eq=False)
class Member:
    """One trial of a fused program.

    Attributes:
        model: its network, compiled (its optimizer is the one applied).
        evaluator: scores its epochs, keeps its best weights, stops it early.
        seed: its shuffle seed (train.seed), as fit_on_device's.
        callbacks: its other Keras callbacks, called after the evaluator.
        error: what ended it before its last epoch, if anything (optuna.TrialPruned,
            TrialFailed, KeyboardInterrupt for a stop request, ...); set by fit_fused, for the
            caller to raise.
        epochs_run: epochs it trained in this call.
    """

    model: keras.Model
    evaluator: DeviceEvaluator
    seed: int
    callbacks: Sequence[keras.callbacks.Callback] = ()
    error: BaseException | None = None
    epochs_run: int = 0
    hooks: keras.callbacks.CallbackList = field(init=False, repr=False)


class Traced:
    """A member's hyperparameter during the trace, where Keras compares it with a number
    (`if self.rate > 0`, `if self.l2 != 0.0`): the comparison is decided on the members' own
    values, which must agree; arithmetic and conversion use the traced array."""

    def __init__(self, traced: Any, values: Sequence[Any]) -> None:
        self.traced, self.values = traced, list(values)

    def __jax_array__(self) -> Any:
        return self.traced

    def _decide(self, op: Callable[[Any, Any], Any], other: Any) -> bool:
        outcomes = {bool(op(v, other)) for v in self.values}
        if len(outcomes) > 1:
            raise ValueError(f"fused members differ in a setting Keras tests ({op.__name__} "
                             f"{other!r} on {self.values}): they cannot share one program")
        return outcomes.pop()

    def __bool__(self) -> bool:
        return self._decide(lambda v, _: v, None)

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        return self._decide(operator.eq, other)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return self._decide(operator.ne, other)

    def __lt__(self, other: Any) -> bool:
        return self._decide(operator.lt, other)

    def __le__(self, other: Any) -> bool:
        return self._decide(operator.le, other)

    def __gt__(self, other: Any) -> bool:
        return self._decide(operator.gt, other)

    def __ge__(self, other: Any) -> bool:
        return self._decide(operator.ge, other)

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, o: Any) -> Any: return self.traced + o  # noqa: E704
    def __radd__(self, o: Any) -> Any: return o + self.traced  # noqa: E704
    def __sub__(self, o: Any) -> Any: return self.traced - o  # noqa: E704
    def __rsub__(self, o: Any) -> Any: return o - self.traced  # noqa: E704
    def __mul__(self, o: Any) -> Any: return self.traced * o  # noqa: E704
    def __rmul__(self, o: Any) -> Any: return o * self.traced  # noqa: E704
    def __truediv__(self, o: Any) -> Any: return self.traced / o  # noqa: E704
    def __rtruediv__(self, o: Any) -> Any: return o / self.traced  # noqa: E704
    def __neg__(self) -> Any: return -self.traced  # noqa: E704


@dataclass(frozen=True)
class Hyper:
    """One attribute a member sets to its own value: where it lives on each member, and whether
    Keras compares it with a number (then the trace sees a Traced, else the array itself)."""

    name: str
    owners: tuple[Any, ...]  # the object holding it, one per member
    attr: str
    compared: bool

    def values(self) -> list[Any]:
        return [getattr(o, self.attr) for o in self.owners]


def hypers(models: Sequence[keras.Model]) -> list[Hyper]:
    """The per-member hyperparameters of models of one structure (fusion_error says none)."""
    found: list[Hyper] = []
    for i, layers in enumerate(zip(*(m.layers for m in models), strict=True)):
        for kind, attrs in LAYER_HYPERS.items():
            if isinstance(layers[0], kind):
                found += [Hyper(f"{layers[0].name}.{a}", layers, a, kind is keras.layers.Dropout)
                          for a in attrs]
        for key in REGULARIZER_KEYS:
            regs = tuple(getattr(layer, key, None) for layer in layers)
            if isinstance(regs[0], keras.regularizers.L1L2):
                found += [Hyper(f"{layers[0].name}.{key}.{a}", regs, a, True) for a in ("l1", "l2")]
    opts = tuple(_inner(m.optimizer) for m in models)
    if getattr(opts[0], "weight_decay", None) is not None:
        found.append(Hyper("optimizer.weight_decay", opts, "weight_decay", False))
    schedules = tuple(o._learning_rate for o in opts)
    if isinstance(schedules[0], keras.optimizers.schedules.LearningRateSchedule):
        found += [Hyper(f"schedule.{k}", schedules, k, False)
                  for k, v in schedules[0].get_config().items() if _number(v)]
    return found


def fusion_error(models: Sequence[keras.Model], losses: Sequence[Any] = ()) -> str:
    """Why these compiled models cannot be trained as one program ('' when they can): a layer,
    its settings, a variable's shape, the optimizer or the loss differs other than by the
    per-member hyperparameters (hypers)."""
    first = models[0]
    if len({len(m.layers) for m in models}) > 1:
        return "their networks have different numbers of layers"
    for i, model in enumerate(models[1:], 1):
        for a, b in zip(first.layers, model.layers, strict=True):
            if type(a) is not type(b) or _structure(a) != _structure(b):
                return f"member {i}'s layer {b.name} differs from member 0's {a.name}"
        for group in ("trainable_variables", "non_trainable_variables"):
            for a, b in zip(getattr(first, group), getattr(model, group), strict=True):
                if a.shape != b.shape or a.dtype != b.dtype:
                    return f"member {i}'s variable {b.path} is {b.shape}, member 0's {a.shape}"
        if _optimizer_structure(first.optimizer) != _optimizer_structure(model.optimizer):
            return f"member {i}'s optimizer differs from member 0's other than by its numbers"
    if losses and len({id(loss) for loss in losses}) > 1:
        return "their losses differ"
    return ""


def fit_fused(
    members: Sequence[Member],
    data: DeviceData,
    *,
    loss: Callable[[Any, Any], Any],
    batch_size: int,
    initial_epoch: int,
    epochs: int,
    dispatch: str = "auto",
    strategy: str = "auto",
    pipeline: bool | None = None,
) -> None:
    """Trains the members for epochs `initial_epoch` .. `epochs - 1` in one program, each as
    fit_on_device would train it alone; a member that fails or is pruned gets `error` set and
    leaves, the others go on.

    Args:
        dispatch: train.device_dispatch, as fit_on_device's.
        strategy: `vmap` (the members' steps as one batched step: a convolution becomes a
            grouped one), `unroll` (each member's step in the same program one after the
            other), or `auto` (resolve_strategy).
        pipeline: as fit_on_device's: the next epoch is dispatched before this one's callbacks
            run; a member that leaves meanwhile leaves the others' rows of it unchanged.

    Raises:
        ValueError: the members cannot share one program (fusion_error).
    """
    models = [m.model for m in members]
    for model in models:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    if why := fusion_error(models):
        raise ValueError(f"these networks cannot be trained as one program: {why}")
    live = [m for m in members if _ran(m, lambda m=m: _begin(m))]
    found = hypers(models)
    stack = Stack(found, [members.index(m) for m in live], resolve_strategy(strategy))
    epoch_fn = epoch_program(models[0], loss, data, batch_size, resolve_dispatch(dispatch),
                             compile=stack.compile)
    state = _stacked([read_state(m.model) for m in live]) if live else None

    def keep(positions: list[int]) -> None:
        nonlocal live, state
        if not positions:  # every member has ended (a stop request ends them all at once)
            live = []
        elif len(positions) < len(live):
            live = [live[p] for p in positions]
            idx = jnp.asarray(positions, jnp.int32)
            state = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), state)
            stack.keep(positions)

    def keys(epoch: int) -> Any:
        return jnp.stack([jax.random.fold_in(jax.random.key(m.seed), epoch) for m in live])

    pipeline = resolve_pipeline(pipeline)
    ahead: Ahead | _Rows | None = None
    ahead_of: list[Member] = []  # the members `ahead` was dispatched for
    for epoch in range(initial_epoch, epochs):
        keep([p for p, m in enumerate(live)
              if _ran(m, lambda m=m: m.hooks.on_epoch_begin(epoch))])
        if not live:
            break
        if ahead is not None and live != ahead_of:  # lanes never mix: the rest's rows stand
            ahead = _Rows(ahead, [ahead_of.index(m) for m in live])
        try:
            state, logs, val_out = (ahead or Ahead(epoch_fn, state, keys(epoch))).result()
        except Exception as exc:  # noqa: BLE001  (out of device memory: each member fails with it)
            for m in live:
                m.error = exc
            live = []
            break
        ahead = None
        for p, m in enumerate(live):  # slices and reads on the device, before the next epoch
            hand_over(m.model, m.evaluator, _member(state, p), val_out[p, : data.n_val])
        if pipeline and epoch + 1 < epochs:
            # The next epoch runs on the device while this one's callbacks run (fit_on_device).
            ahead, ahead_of = Ahead(epoch_fn, state, keys(epoch + 1)), list(live)
        stays = []
        for p, m in enumerate(live):
            m.epochs_run += 1
            end = {k: float(v[p]) for k, v in logs.items()}
            if not _ran(m, lambda m=m, end=end: m.hooks.on_epoch_end(epoch, end)):
                continue
            if m.model.stop_training:
                _ran(m, m.hooks.on_train_end)
            else:
                stays.append(p)
        keep(stays)
    for m in members:
        m.model._epoch_learning_rate = None
    for m in live:
        _ran(m, m.hooks.on_train_end)


STRATEGIES = ("vmap", "unroll")


def resolve_strategy(strategy: str) -> str:
    """auto: `vmap` on an accelerator; `unroll` on a CPU, where XLA runs a vmapped convolution
    (a grouped one, feature_group_count N) at a third of the speed of N plain ones
    (benchmarks/bench_fused.py)."""
    if strategy == "auto":
        return "unroll" if jax.default_backend() == "cpu" else "vmap"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be auto or one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _begin(member: Member) -> None:
    member.hooks = keras.callbacks.CallbackList([member.evaluator, *member.callbacks],
                                                model=member.model)
    member.model.stop_training = False
    member.hooks.on_train_begin()


class Stack:
    """The members' hyperparameters as arrays (rows: the live members, in order), and the
    compile function that vmaps an epoch part over them and the stacked state."""

    def __init__(self, found: Sequence[Hyper], rows: Sequence[int], strategy: str) -> None:
        self.found, self.strategy = list(found), strategy
        self.all_values = [h.values() for h in self.found]
        self.rows = list(rows)
        self.arrays = self._arrays()

    def _arrays(self) -> list[Any]:
        return [jnp.asarray(np.stack([np.asarray(values[r], np.float32) for r in self.rows]))
                for values in self.all_values]

    def keep(self, positions: Sequence[int]) -> None:
        """Only the live members at these positions go on."""
        self.rows = [self.rows[p] for p in positions]
        self.arrays = self._arrays()

    @contextlib.contextmanager
    def traced(self, arrays: Sequence[Any]) -> Iterator[None]:
        """The first member's objects hold the traced hyperparameters while a part is traced."""
        saved = [getattr(h.owners[0], h.attr) for h in self.found]
        try:
            for h, values, a in zip(self.found, self.all_values, arrays, strict=True):
                live = [values[r] for r in self.rows]
                object.__setattr__(h.owners[0], h.attr, Traced(a, live) if h.compared else a)
            yield
        finally:
            for h, value in zip(self.found, saved, strict=True):
                object.__setattr__(h.owners[0], h.attr, value)

    def compile(self, part: Callable[..., Any], mapped: int) -> Callable[..., Any]:
        """The part over the stack: vmapped (strategy vmap), or one copy of it per member in
        the same program (unroll)."""
        def with_hypers(arrays: list[Any], *args: Any) -> Any:
            with self.traced(arrays):
                return part(*args)

        def unrolled(arrays: list[Any], *args: Any) -> Any:
            outs = []
            for i in range(len(self.rows)):
                own = [jax.tree.map(lambda a: a[i], x) for x in args[:mapped]]  # noqa: B023
                outs.append(with_hypers([a[i] for a in arrays], *own, *args[mapped:]))
            return jax.tree.map(lambda *o: jnp.stack(o), *outs)

        if self.strategy == "unroll":
            fn = jax.jit(unrolled)
        else:
            n_args = part.__code__.co_argcount
            fn = jax.jit(jax.vmap(with_hypers,
                                  in_axes=(0, *[0] * mapped, *[None] * (n_args - mapped))))
        return lambda *args: fn(self.arrays, *args)


class _Rows:
    """Some members' rows of an epoch dispatched for more (the others left before its end)."""

    def __init__(self, ahead: Ahead | _Rows, rows: list[int]) -> None:
        self.ahead, self.rows = ahead, rows

    def result(self) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
        state, logs, val_out = self.ahead.result()
        idx = jnp.asarray(self.rows, jnp.int32)
        return (jax.tree.map(lambda a: jnp.take(a, idx, axis=0), state),
                {k: np.asarray(v)[self.rows] for k, v in logs.items()}, val_out[self.rows])


def _ran(member: Member, call: Callable[[], Any]) -> bool:
    """Runs one of a member's hooks; one that raises ends the member: its error is set and
    False returned. A stop request too (KeyboardInterrupt from its StopCheck): the members
    share it, so each ends at this epoch's end with its own epoch recorded and checkpointed."""
    try:
        call()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001  (raised as that member's end)
        member.error = exc
        return False
    return True


def _stacked(states: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def _member(state: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], state)


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "inner_optimizer", optimizer)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _structure(layer: keras.layers.Layer) -> dict[str, Any]:
    """A layer's config without what a member may set to its own value."""
    config = dict(layer.get_config())
    for kind, attrs in LAYER_HYPERS.items():
        if isinstance(layer, kind):
            for key in attrs:
                config.pop(key, None)
    # A seed or an initializer sets a variable's first value only (a seed generator's state).
    config = {k: v for k, v in config.items() if k != "seed" and not k.endswith("_initializer")}
    for key in REGULARIZER_KEYS:
        reg = config.get(key)
        if isinstance(reg, dict) and isinstance(reg.get("config"), dict):
            config[key] = {**reg, "config": {k: v for k, v in reg["config"].items()
                                             if k not in ("l1", "l2")}}
    return config


def _optimizer_structure(optimizer: Any) -> Any:
    opt = _inner(optimizer)
    config = {k: v for k, v in opt.get_config().items()
              if k not in ("learning_rate", "weight_decay", "name")}
    schedule = opt._learning_rate
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        config["schedule"] = (type(schedule).__name__, {
            k: v for k, v in schedule.get_config().items() if not _number(v)})
    return type(optimizer).__name__, type(opt).__name__, config
