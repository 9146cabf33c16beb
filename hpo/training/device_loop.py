"""The device-resident training path (train.loop: device): one compiled dispatch per epoch on JAX.

    KERAS_BACKEND=jax hpo train run.yaml      # with train: {loop: device}

Keras' JAX trainer copies every batch from host memory and dispatches one step at a time. Here
the clusters are on the device already (device_data.py), and one jitted call runs a whole
epoch (train.device_dispatch epoch, the default on a GPU): a shuffle drawn on the device,
`jax.lax.scan` over the full batches (and one step on the short last batch, as model.fit takes
it), each step the Keras model's `stateless_call`, the configured loss plus the regularisation
losses the model adds, and the compiled optimizer's `stateless_apply`; then a forward pass over
the validation split. Trainable,
non-trainable (batch-norm statistics, the seeds of dropout and RandomDihedral: augmentation is
a layer of the model, so it runs on the device in the same call) and optimizer variables are
threaded through the scan, and the learning-rate schedule is the optimizer's own (it reads
the optimizer's iteration count). After each epoch the variables are written back to the same
Keras model, so the callbacks of a trial (evaluator, epoch log, pruning, stop request) see it
as they do after an epoch of model.fit, and what is saved, logged and loaded is unchanged.

What crosses to the host each epoch: the mean loss, the training-split residual sums and the
validation predictions (mu, sigma: 8 bytes a cluster), which EpochEvaluator scores as it
scores model.fit's. A stop request (StopCheck) is seen at the end of an epoch, not of a batch.

On a CPU (train.device_dispatch auto) each step is a call of its own, the same step on the
same device-resident data: XLA:CPU runs the gradient convolutions inside a loop body on a slow
path, about 10x a step here (jax-ml/jax#12868, benchmarks/bench_device_loop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from hpo.errors import TrialFailed
from hpo.model.metrics import StreamingResidual
from hpo.training.callbacks import EpochEvaluator
from hpo.training.callbacks import current_learning_rate
from hpo.training.device_data import DeviceData

State = tuple[list[Any], list[Any], list[Any]]  # trainable, non-trainable, optimizer variables


class DeviceEvaluator(EpochEvaluator):
    """EpochEvaluator for the device path: the validation predictions come from the epoch's own
    dispatch, and the best epoch's weights stay on the device until restored."""

    arrays_stay = True  # the model's arrays are replaced each epoch, never changed or donated

    def __init__(self, log_mass: np.ndarray, *, patience: int | None = None, monitor: str) -> None:
        empty = np.zeros((0,), np.float32)
        super().__init__((empty, empty, np.asarray(log_mass)), patience=patience, monitor=monitor)
        self.predictions: tuple[np.ndarray, np.ndarray | None] | None = None
        self.state: State | None = None

    def val_predictions(self) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.predictions is not None, "the device loop sets them before each epoch end"
        return self.predictions

    def snapshot(self) -> Any:
        assert self.state is not None
        return self.state[:2]  # device arrays, not copied to the host

    def export_best(self) -> list[Any] | None:
        # Device arrays, never changed in place: a checkpoint's writing thread copies them.
        if self.best_weights is None:
            return None
        trainable, non_trainable = self.best_weights
        return [*trainable, *non_trainable]

    def import_best(self, weights: list[np.ndarray] | None) -> None:
        if weights is None:
            self.best_weights = None
            return
        n = len(self.model.trainable_variables)
        arrays = [jnp.asarray(a) for a in weights]
        self.best_weights = [arrays[:n], arrays[n:]]

    def restore_best(self) -> None:
        # As model.set_weights(model.get_weights()) of the best epoch: every weight, not the
        # seed generators' states (which model.weights does not hold either).
        if self.best_weights is None:
            return
        trainable, non_trainable = self.best_weights
        weights = {id(v) for v in self.model.weights}
        for var, value in zip(self.model.trainable_variables, trainable, strict=True):
            var.assign(value)
        for var, value in zip(self.model.non_trainable_variables, non_trainable, strict=True):
            if id(var) in weights:
                var.assign(value)


def fit_on_device(
    model: keras.Model,
    data: DeviceData,
    *,
    loss: Callable[[Any, Any], Any],
    batch_size: int,
    seed: int,
    initial_epoch: int,
    epochs: int,
    evaluator: DeviceEvaluator,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    dispatch: str = "auto",
    pipeline: bool | None = None,
) -> None:
    """Trains a compiled model for epochs `initial_epoch` .. `epochs - 1`, as model.fit would.

    Args:
        model: a network from build_model, compiled (its optimizer is the one applied).
        data: the training and validation clusters on the device.
        loss: a loss of hpo.model.losses (the model's regularisation losses are added to it).
        batch_size: clusters per step; the last step of an epoch takes the remainder.
        seed: the shuffle seed; epoch e shuffles with key fold_in(key(seed), e).
        evaluator: scores each epoch, keeps the best weights, stops early; first callback.
        callbacks: the trial's other Keras callbacks, called after the evaluator each epoch.
        dispatch: train.device_dispatch: `epoch` (one call an epoch), `step` (one call a step)
            or `auto` (resolve_dispatch).
        pipeline: dispatch each epoch before the previous one's callbacks run, so that the
            storage and tracking calls of an epoch end cost no device time (the same numbers:
            an epoch always starts from the state its predecessor ended in, as the callbacks
            left it); None: on an accelerator only (resolve_pipeline).

    Raises:
        TrialFailed: a non-finite loss or prediction (from the evaluator), or device memory ran
            out.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    hooks = keras.callbacks.CallbackList([evaluator, *callbacks], model=model)
    model.stop_training = False
    hooks.on_train_begin()
    epoch_fn = epoch_program(model, loss, data, batch_size, resolve_dispatch(dispatch))
    key = jax.random.key(seed)
    pipeline = resolve_pipeline(pipeline)
    ahead: Ahead | None = None
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        state = read_state(model)  # a warm start or a hook may have set the weights
        if ahead is None or not ahead.starts_from(state):
            ahead = Ahead(epoch_fn, state, jax.random.fold_in(key, epoch))
        state, logs, val_out = ahead.result()
        ahead = None
        hand_over(model, evaluator, state, val_out[: data.n_val])
        if pipeline and epoch + 1 < epochs:
            # The next epoch runs on the device while this one's callbacks (epoch log, pruning
            # report, checkpoint) run here; dropped if they stop the run or change its weights.
            ahead = Ahead(epoch_fn, state, jax.random.fold_in(key, epoch + 1))
        hooks.on_epoch_end(epoch, {k: float(v) for k, v in logs.items()})
        if model.stop_training:
            break
    model._epoch_learning_rate = None
    hooks.on_train_end()


DISPATCHES = ("epoch", "step")


def resolve_pipeline(pipeline: bool | None) -> bool:
    """None: pipelined on an accelerator, where the host is idle while the device computes; not
    on a CPU, whose cores the callbacks would take from the epoch, and where the epoch a
    stopped run dispatched ahead is work thrown away (benchmarks/bench_epoch_calls.py)."""
    return jax.default_backend() != "cpu" if pipeline is None else pipeline


def resolve_dispatch(dispatch: str) -> str:
    """train.device_dispatch for this process: auto is `epoch` on an accelerator and `step` on
    a CPU, where XLA runs the gradient convolutions inside a loop body on a slow path (about 10x
    a step here; jax-ml/jax#12868)."""
    if dispatch == "auto":
        return "step" if jax.default_backend() == "cpu" else "epoch"
    return dispatch


@dataclass(frozen=True)
class EpochParts:
    """The pieces of one epoch as pure functions, before compiling: each takes the per-model
    arguments first (`mapped` of them: what a fused program stacks per member, fused.py) and
    the device data after them.

        start(state, key) -> (carry, order)
        step_at(carry, order, train_x, train_y, i) -> carry     i: the full batch's index
        last(carry, order, train_x, train_y) -> carry          the short last batch
        finish(carry, val_x) -> (state, logs, validation outputs)
        whole_epoch(state, key, train_x, train_y, val_x) -> (state, logs, validation outputs)
    """

    start: Callable[..., Any]
    step_at: Callable[..., Any]
    last: Callable[..., Any]
    finish: Callable[..., Any]
    whole_epoch: Callable[..., Any]
    full: int  # full batches an epoch
    rest: int  # clusters of the short last batch (0: none)

    mapped = {"start": 2, "step_at": 2, "last": 2, "finish": 1, "whole_epoch": 2}


def epoch_parts(model: keras.Model, loss: Callable[[Any, Any], Any], data: DeviceData,
                batch_size: int) -> EpochParts:
    """One epoch's steps and validation as pure functions of the model's state (see
    epoch_program), traced through `model` and its optimizer."""
    optimizer = model.optimizer
    metric = StreamingResidual(with_sigma=model.output_shape[-1] > 1)
    n, full = data.n_train, data.n_train // batch_size
    rest = n - full * batch_size

    def total_loss(trainable: list[Any], non_trainable: list[Any], opt_vars: list[Any],
                   x: dict[str, Any], y: Any) -> tuple[Any, tuple[Any, Any, list[Any]]]:
        y_pred, non_trainable, extra = model.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True)
        value = loss(y, y_pred)
        if extra:  # as Keras' compute_loss: the compiled loss plus each added loss, summed
            value = jnp.sum(jnp.stack([value, *[jnp.sum(e).astype(value.dtype) for e in extra]]))
        unscaled = value
        # A loss-scale optimizer (mixed precision) scales it, reading its own variables.
        with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, opt_vars))):
            value = optimizer.scale_loss(value)
        return value, (unscaled, y_pred, non_trainable)

    grad = jax.value_and_grad(total_loss, has_aux=True)

    def step(carry: tuple[Any, ...], rows: Any, train_x: dict[str, Any], train_y: Any
             ) -> tuple[Any, ...]:
        trainable, non_trainable, opt_vars, metric_vars, loss_sum = carry
        x = {k: jnp.take(v, rows, axis=0) for k, v in train_x.items()}
        y = jnp.take(train_y, rows, axis=0)
        (_, (unscaled, y_pred, non_trainable)), grads = grad(
            trainable, non_trainable, opt_vars, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        metric_vars = metric.stateless_update_state(metric_vars, y, y_pred)
        loss_sum = loss_sum + unscaled.astype("float32") * rows.shape[0]
        return trainable, non_trainable, opt_vars, metric_vars, loss_sum

    def start(state: State, key: Any) -> tuple[tuple[Any, ...], Any]:
        carry = (*state, [jnp.zeros(v.shape, v.dtype) for v in metric.variables], jnp.zeros(()))
        return carry, jax.random.permutation(key, n)

    def step_at(carry: tuple[Any, ...], order: Any, train_x: dict[str, Any], train_y: Any,
                i: Any) -> tuple[Any, ...]:
        rows = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        return step(carry, rows, train_x, train_y)

    def last(carry: tuple[Any, ...], order: Any, train_x: dict[str, Any], train_y: Any
             ) -> tuple[Any, ...]:  # the short last batch, as model.fit takes it
        return step(carry, order[full * batch_size :], train_x, train_y)

    def finish(carry: tuple[Any, ...], val_x: dict[str, Any]) -> tuple[State, dict[str, Any], Any]:
        trainable, non_trainable, opt_vars, metric_vars, loss_sum = carry
        logs = {"loss": loss_sum / n, **metric.stateless_result(metric_vars)}
        val_out = validate(trainable, non_trainable, val_x)
        return (trainable, non_trainable, opt_vars), logs, val_out

    def validate(trainable: list[Any], non_trainable: list[Any], val_x: dict[str, Any]) -> Any:
        rows = next(iter(val_x.values())).shape[0]
        batches = {k: v.reshape(rows // data.val_batch, data.val_batch, *v.shape[1:])
                   for k, v in val_x.items()}

        def forward(x: dict[str, Any]) -> Any:
            y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return y_pred.astype("float32")

        out = jax.lax.map(forward, batches)
        return out.reshape(rows, out.shape[-1])

    def whole_epoch(state: State, key: Any, train_x: dict[str, Any], train_y: Any,
                    val_x: dict[str, Any]) -> tuple[State, dict[str, Any], Any]:
        carry, order = start(state, key)
        if full:
            carry, _ = jax.lax.scan(
                lambda c, i: (step_at(c, order, train_x, train_y, i), None), carry,
                jnp.arange(full))
        if rest:
            carry = last(carry, order, train_x, train_y)
        return finish(carry, val_x)

    return EpochParts(start, step_at, last, finish, whole_epoch, full, rest)


def epoch_program(model: keras.Model, loss: Callable[[Any, Any], Any], data: DeviceData,
                  batch_size: int, dispatch: str = "epoch",
                  compile: Callable[[Callable[..., Any], int], Callable[..., Any]] | None = None,
                  ) -> Callable[[State, Any], tuple[State, dict[str, Any], Any]]:
    """One epoch as a function (state, key) -> (state, logs, validation outputs (n_val padded,
    outputs)), compiled.

    dispatch `epoch`: one call runs it all (the steps in a lax.scan); `step`: one call per
    optimizer step, the same step function, the data and the shuffle still on the device.
    logs are what model.fit's would be: `loss`, the batch-size-weighted mean of the steps'
    total losses, and the training-split residual metrics of StreamingResidual, unprefixed.
    compile(part, mapped) compiles each part (default jax.jit; fused.py vmaps the first
    `mapped` arguments over the members of a fused program first).
    """
    if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
    parts = epoch_parts(model, loss, data, batch_size)
    jit = compile or (lambda f, mapped: jax.jit(f))
    if dispatch == "epoch":
        epoch_fn = jit(parts.whole_epoch, EpochParts.mapped["whole_epoch"])
        return lambda state, key: epoch_fn(state, key, data.train_x, data.train_y, data.val_x)

    start_fn, step_fn, last_fn, finish_fn = (
        jit(getattr(parts, name), EpochParts.mapped[name])
        for name in ("start", "step_at", "last", "finish"))

    def by_step(state: State, key: Any) -> tuple[State, dict[str, Any], Any]:
        carry, order = start_fn(state, key)
        for i in range(parts.full):
            carry = step_fn(carry, order, data.train_x, data.train_y, i)
        if parts.rest:
            carry = last_fn(carry, order, data.train_x, data.train_y)
        return finish_fn(carry, data.val_x)

    return by_step


def read_state(model: keras.Model) -> State:
    """The model's and its optimizer's variables as the arrays an epoch program takes."""
    return ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables])


class Ahead:
    """An epoch dispatched (JAX runs it asynchronously) from `start`, its result fetched later.

    The epoch programs donate no buffer, so `start` stays valid: a callback that leaves the
    model's variables holding its arrays (starts_from) has changed nothing the epoch read.
    """

    def __init__(self, epoch_fn: Callable[[Any, Any], tuple[Any, Any, Any]], start: Any,
                 key: Any) -> None:
        self.start = start
        self._error: BaseException | None = None
        try:
            self._out = epoch_fn(start, key)
        except jax.errors.JaxRuntimeError as exc:
            self._error = exc

    def starts_from(self, state: Any) -> bool:
        """Whether `state` is the very arrays this epoch started from."""
        a, b = jax.tree.leaves(self.start), jax.tree.leaves(state)
        return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))

    def result(self) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
        """(state, logs, validation outputs), the last two on the host; waits for the device.

        Raises:
            TrialFailed: the device ran out of memory.
        """
        try:
            if self._error is not None:
                raise self._error
            state, logs, val_out = self._out
            logs, val_out = jax.device_get((logs, val_out))
        except jax.errors.JaxRuntimeError as exc:
            if "RESOURCE_EXHAUSTED" in str(exc):
                raise TrialFailed(f"out of device memory: {str(exc).splitlines()[0]}") from exc
            raise
        return state, logs, np.asarray(val_out)


def hand_over(model: keras.Model, evaluator: DeviceEvaluator, state: State,
              val_out: np.ndarray) -> None:
    """Gives an epoch's end to the model (its variables) and its evaluator (the state and the
    validation predictions, n_val rows), so that the callbacks see it as after model.fit's."""
    write_back(model, state)
    # Read now, while the device is idle (callbacks.learning_rate).
    model._epoch_learning_rate = current_learning_rate(model)
    evaluator.state = state
    with_sigma = val_out.shape[-1] > 1
    evaluator.predictions = (val_out[:, 0], val_out[:, 1] if with_sigma else None)


def write_back(model: keras.Model, state: State) -> None:
    """Assigns the state's values to the model's and its optimizer's variables (no copy on JAX:
    a variable then holds the same device array)."""
    trainable, non_trainable, opt_vars = state
    for var, value in zip(model.trainable_variables, trainable, strict=True):
        var.assign(value)
    for var, value in zip(model.non_trainable_variables, non_trainable, strict=True):
        var.assign(value)
    for var, value in zip(model.optimizer.variables, opt_vars, strict=True):
        var.assign(value)
