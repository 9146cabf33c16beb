"""The device training path (train.loop: device, Keras' JAX backend): the same steps, metrics,
stopping, failures and saved model as model.fit.

    KERAS_BACKEND=jax .venv/bin/python -m pytest tests/training/test_device_loop.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
import pytest

from hpo.config import apply_overrides
from hpo.data import load_dataset
from hpo.errors import ConfigError
from hpo.errors import TrialFailed
from hpo.training import train
from tests.conftest import make_signal_data
from tests.conftest import write_h5

ON_JAX = keras.backend.backend() == "jax"
jax_only = pytest.mark.skipif(not ON_JAX, reason="the device loop runs on Keras' JAX backend only "
                              "(make test runs this file again with KERAS_BACKEND=jax)")

SMALL = {
    "model.conv_blocks": [[8], [8]],
    "model.pool.size": 2,
    "model.dense": [32, 16],
    "train.batch_size": 32,
    "train.optimizer.learning_rate": 3e-3,
}
DEVICE = {**SMALL, "train.loop": "device"}


class Logs(keras.callbacks.Callback):
    """The logs every epoch hands to the callbacks after the evaluator (what pruning sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs.append(dict(logs or {}))


@jax_only
@pytest.mark.parametrize(("optimizer", "batch_norm", "dispatch"),
                         [("adam", False, "epoch"), ("adam", False, "step"), ("sgd", True, "epoch")])
def test_one_step_changes_the_weights_as_keras_train_step_does(signal_h5, optimizer, batch_norm,
                                                               dispatch):
    # Rule: from the same weights and batch, one step of the device loop (one epoch of one batch)
    # leaves every weight and the optimizer state as Keras' own train step does, regularisation
    # losses and batch-norm statistics included (no dropout or augmentation, whose random draws
    # differ). Batch norm is checked with SGD: before batch norm a conv bias gets a gradient of
    # float noise, which Adam divides by its own size.
    from hpo.model.builder import build_model
    from hpo.model.builder import InputStats
    from hpo.model.losses import LOSSES
    from hpo.training.device_data import place
    from hpo.training.device_loop import DeviceEvaluator
    from hpo.training.device_loop import fit_on_device

    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "model.dropout.placement": "none",
                           "model.batch_norm": batch_norm,
                           "model.regularizer": {"type": "l2", "l2": 1e-2, "layers": "both"}})
    stats = InputStats.fit(ds.images, ds.redshift, ds.log_mass, "log1p")
    batch = np.arange(32)

    def compiled() -> keras.Model:
        model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats, seed=0)
        opt = (keras.optimizers.Adam(0.01) if optimizer == "adam"
               else keras.optimizers.SGD(0.01, momentum=0.9))
        model.compile(optimizer=opt, loss=LOSSES["mse"])
        return model

    keras_model, device_model = compiled(), compiled()
    device_model.set_weights(keras_model.get_weights())
    before = keras_model.get_weights()
    keras_model.train_on_batch({"images": ds.images[batch], "redshift": ds.redshift[batch, None]},
                               ds.log_mass[batch])
    data = place(ds, batch, np.arange(32, 64), exposure=False)
    fit_on_device(device_model, data, loss=LOSSES["mse"], batch_size=32, seed=0, initial_epoch=0,
                  epochs=1, dispatch=dispatch,
                  evaluator=DeviceEvaluator(ds.log_mass[32:64], monitor="val_residual_std"))
    assert int(device_model.optimizer.iterations.numpy()) == 1
    # Each variable's step equals Keras' to a thousandth of its largest element: the device sums
    # the batch in another order, and float32 rounding of that order is amplified where a
    # gradient cancels (through batch norm's centring: measured 7e-6 on a conv kernel whose
    # steps reach 1e-2) or sits near Adam's epsilon (lr * g / (|g| + 1e-7)); a wrong gradient,
    # learning rate, regulariser or batch-norm update moves a weight by the order of its step.
    for ours, theirs, start, var in zip(device_model.get_weights(), keras_model.get_weights(),
                                        before, keras_model.weights, strict=True):
        step = theirs - start
        np.testing.assert_allclose(ours - start, step, rtol=0,
                                   atol=1e-3 * float(np.max(np.abs(step))) + 1e-7,
                                   err_msg=var.path)
    # The optimizer state holds the gradient itself (momentum, moments), summed over the batch in
    # another order (the device shuffles within it): equal to float32 rounding of the gradients'
    # scale (a conv bias before batch norm has a gradient of pure rounding noise).
    scale = max(float(np.max(np.abs(v.numpy()))) for v in keras_model.optimizer.variables)
    pairs = zip(device_model.optimizer.variables, keras_model.optimizer.variables, strict=True)
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=ours.path)


@jax_only
@pytest.mark.slow
def test_short_training_on_the_device_lowers_the_validation_residual_std(signal_h5):
    # Rule: on a learnable signal the device loop trains (augmentation and dropout on, as by
    # default): the validation residual std falls well below the label std, and the run
    # records which path trained it.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 12, "train.device_dispatch": "epoch"})
    result = train(cfg, ds)
    history = result.history["val_residual_std"]
    assert result.training_path == "device"
    assert len(history) == result.epochs_run == 12
    assert result.val_metrics["residual_std"] < 0.5 * float(np.std(ds.log_mass))
    assert min(history[-4:]) < 0.6 * history[0]


@jax_only
def test_an_epoch_per_call_and_a_step_per_call_train_alike(signal_h5):
    # Rule: train.device_dispatch changes how the steps are dispatched, not what they compute:
    # an epoch of several batches (a short last one included) in one lax.scan call, or one call
    # per step, from the same seed, gives the same weights and metrics (float tolerance).
    ds = load_dataset(signal_h5)
    runs = {d: train(apply_overrides({**DEVICE, "train.epochs": 2, "train.device_dispatch": d}), ds)
            for d in ("epoch", "step")}
    for ours, theirs in zip(runs["epoch"].model.get_weights(), runs["step"].model.get_weights(),
                            strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    for key, values in runs["step"].history.items():
        np.testing.assert_allclose(runs["epoch"].history[key], values, rtol=1e-4, atol=1e-5,
                                   err_msg=key)


@jax_only
def test_per_epoch_metrics_have_the_keys_of_the_fit_path(signal_h5):
    # Rule: every epoch the callbacks (pruning, the epoch log) get the keys model.fit gives them,
    # sigma metrics and an MSE warm start included, and the history holds the same keys.
    ds = load_dataset(signal_h5)
    base = {**SMALL, "train.epochs": 2,
            "train.loss": {"type": "gaussian_nll", "warm_start_epochs": 1}}
    seen = {}
    for loop in ("fit", "device"):
        logs = Logs()
        result = train(apply_overrides({**base, "train.loop": loop}), ds, callbacks=[logs])
        assert len(logs.epochs) == 2 and result.training_path == loop
        seen[loop] = ([sorted(e) for e in logs.epochs], sorted(result.history))
    assert seen["device"] == seen["fit"]
    assert "val_nll" in seen["device"][1] and "train_coverage68" in seen["device"][1]


@jax_only
def test_a_nan_fails_the_trial_as_on_the_fit_path(signal_h5):
    # Rule: a diverging run raises TrialFailed naming the epoch, as model.fit's does.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 3, "train.optimizer.learning_rate": 1e12,
                           "model.input.transform": "none", "model.input.standardize": False})
    with pytest.raises(TrialFailed, match="epoch"):
        train(cfg, ds)


@jax_only
def test_early_stopping_keeps_the_best_epoch(signal_h5):
    # Rule: patience stops the run early; the returned model is the best epoch's.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 40, "train.early_stopping_patience": 1,
                           "train.optimizer.learning_rate": 0.05})
    result = train(cfg, ds)
    assert result.epochs_run < 40
    best = min(result.history["val_residual_std"])
    assert result.val_metrics["residual_std"] == pytest.approx(best, rel=1e-4)


@jax_only
def test_pruning_stops_the_device_loop_at_its_epoch(signal_h5):
    # Rule: a callback that prunes ends training at that epoch; no further epoch runs.
    class PruneAt1(Logs):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                raise optuna.TrialPruned("Trial was pruned at epoch 1.")

    cb = PruneAt1()
    with pytest.raises(optuna.TrialPruned):
        train(apply_overrides({**DEVICE, "train.epochs": 5}), load_dataset(signal_h5),
              callbacks=[cb])
    assert len(cb.epochs) == 2


@jax_only
def test_the_schedule_advances_with_every_step(signal_h5):
    # Rule: the optimizer takes ceil(N / batch) steps an epoch, as model.fit does (a short last
    # batch included), so a schedule over the run reaches its final rate at its last step.
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 2, "train.schedule": {
        "type": "exponential", "final_learning_rate": 1e-4}})
    result = train(cfg, ds)
    steps = int(np.ceil(len(result.split.train) / 32))
    opt = result.model.optimizer
    assert len(result.split.train) % 32 != 0  # the short batch is exercised
    assert int(opt.iterations.numpy()) == 2 * steps
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(1e-4, rel=1e-4)


@jax_only
def test_the_gpu_options_train_on_the_device(tmp_path):
    # Rule: mixed precision (a loss-scale optimizer), batch norm, the exposure input and a
    # cosine schedule all train on the device path; the dropout and augmentation seeds advance.
    data = write_h5(tmp_path / "mixed.h5", make_signal_data(120, exposure=(150.0, 2500.0)))
    cfg = apply_overrides({**DEVICE, "train.epochs": 2, "train.mixed_precision": True,
                           "model.batch_norm": True, "model.use_exposure": True,
                           "model.exposure_mode": "both", "train.schedule.type": "cosine"})
    result = train(cfg, load_dataset(data))
    assert np.isfinite(result.val_metrics["residual_std"])
    assert keras.mixed_precision.global_policy().name == "float32"
    seeds = [v for v in result.model.non_trainable_variables if "seed_generator" in v.path]
    assert seeds and all(np.any(v.numpy() != 0) for v in seeds)


@jax_only
def test_a_worker_places_a_split_on_the_device_once(signal_h5):
    # Rule: trials on the same file and split reuse the device arrays; another split replaces them.
    from hpo.training.device_data import place

    ds = load_dataset(signal_h5)
    first = place(ds, np.arange(200), np.arange(200, 250), exposure=False)
    assert place(ds, np.arange(200), np.arange(200, 250), exposure=False) is first
    other = place(ds, np.arange(100), np.arange(200, 250), exposure=False)
    assert other is not first and other.n_train == 100 and other.n_val == 50
    np.testing.assert_array_equal(np.asarray(other.val_x["images"])[:50], ds.images[200:250])


@jax_only
def test_a_model_trained_on_the_device_saves_loads_and_predicts_the_same(signal_h5, tmp_path):
    # Rule: the device path leaves a plain Keras model: saved, loaded by load_network (as a
    # logged model is), it predicts what it predicted before saving.
    from hpo.inference.layers import load_network
    from hpo.training.evaluate import predict

    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 2, "train.loss.type": "gaussian_nll"})
    result = train(cfg, ds)
    path = tmp_path / "model.keras"
    result.model.save(path)
    before = predict(result.model, ds.images[:50], ds.redshift[:50], tta=True)
    after = predict(load_network(path), ds.images[:50], ds.redshift[:50], tta=True)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


TF_PREDICT = """
import json, sys
import numpy as np
from hpo.inference.layers import load_network
from hpo.training.evaluate import predict
arrays = np.load(sys.argv[2])
mu, sigma = predict(load_network(sys.argv[1]), arrays["images"], arrays["redshift"], tta=True)
print(json.dumps({"mu": mu.tolist(), "sigma": sigma.tolist()}))
"""


@jax_only
@pytest.mark.slow
def test_a_model_trained_on_the_device_predicts_the_same_under_tensorflow(signal_h5, tmp_path):
    # Rule: the saved model does not depend on the path or backend that trained it: loaded in
    # a TensorFlow process it predicts what the JAX process predicted (float32 tolerance).
    import json
    import os
    import subprocess
    import sys

    from hpo.training.evaluate import predict

    pytest.importorskip("tensorflow")
    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**DEVICE, "train.epochs": 2, "train.loss.type": "gaussian_nll"})
    result = train(cfg, ds)
    path, arrays = tmp_path / "model.keras", tmp_path / "x.npz"
    result.model.save(path)
    np.savez(arrays, images=ds.images[:50], redshift=ds.redshift[:50])
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", TF_PREDICT, str(path), str(arrays)], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    on_tf = json.loads(out.strip().splitlines()[-1])
    mu, sigma = predict(result.model, ds.images[:50], ds.redshift[:50], tta=True)
    np.testing.assert_allclose(on_tf["mu"], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(on_tf["sigma"], sigma, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(ON_JAX, reason="checks the refusal on a backend other than JAX")
def test_the_device_loop_is_refused_off_jax(signal_h5):
    # Rule: train.loop device on another backend is one clear error before any training.
    with pytest.raises(ConfigError, match="train.loop device needs Keras' JAX backend"):
        train(apply_overrides({**DEVICE, "train.epochs": 1}), load_dataset(signal_h5))


@jax_only
def test_a_worker_keeps_compiled_programs_on_disk(tmp_path):
    # Rule: on the JAX backend a worker turns on JAX's persistent compilation cache (its own
    # folder, or JAX_COMPILATION_CACHE_DIR / HPO_JAX_CACHE), so that a shape compiles once per
    # machine; HPO_JAX_CACHE=off leaves it off. In a process of its own: the cache is set before
    # the first compilation.
    import subprocess
    import sys

    script = (
        "import os, keras, jax, jax.numpy as jnp\n"
        "from hpo.training import device\n"
        "device.configure()\n"
        "print('DIR', jax.config.jax_compilation_cache_dir)\n"
        "f = jax.jit(lambda x: jnp.linalg.svd(x @ x.T)[0])\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "f(jnp.ones((64, 64))).block_until_ready()\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("HPO_JAX_CACHE", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / ".cache" / "xray-hpo" / "jax"
    assert f"DIR {folder}" in out.stdout
    assert any(folder.iterdir()), "the compiled program is on disk"
    off = subprocess.run([sys.executable, "-c", script], env={**env, "HPO_JAX_CACHE": "off"},
                         capture_output=True, text=True, timeout=300)
    assert off.returncode == 0 and "DIR None" in off.stdout, off.stderr[-2000:]


class Shrink(keras.callbacks.Callback):
    """Halves every trainable weight at the end of epoch `epoch` (a callback that changes the
    weights, as no shipped one does)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            for v in self.model.trainable_variables:
                v.assign(v.value * 0.5)


@jax_only
@pytest.mark.parametrize("shrink", [None, 1])
def test_the_pipelined_loop_trains_as_the_loop_in_turn(signal_h5, shrink):
    # Rule: dispatching the next epoch before this one's callbacks run changes no number: the
    # histories are equal, and a callback that changes the weights at an epoch end has the next
    # epoch start from its weights (the epoch dispatched ahead is dropped); the learning rate the
    # epoch log reads is the epoch's, not one queued behind the next epoch.
    from hpo.model.builder import build_model
    from hpo.model.builder import InputStats
    from hpo.model.losses import LOSSES
    from hpo.training.callbacks import learning_rate
    from hpo.training.device_data import place
    from hpo.training.device_loop import DeviceEvaluator
    from hpo.training.device_loop import fit_on_device
    from hpo.training.optimizers import build_optimizer

    ds = load_dataset(signal_h5)
    cfg = apply_overrides({**SMALL, "model.dropout.placement": "none",
                           "train.schedule": {"type": "cosine"}})
    stats = InputStats.fit(ds.images, ds.redshift, ds.log_mass, "log1p")
    data = place(ds, np.arange(160), np.arange(160, 200), exposure=False)

    def run(pipeline: bool) -> tuple[dict[str, list[float]], list[float]]:
        keras.utils.set_random_seed(0)
        model = build_model(cfg.model, image_shape=ds.image_shape, stats=stats, seed=0)
        model.compile(optimizer=build_optimizer(cfg.train.optimizer, cfg.train.schedule, 5, 4),
                      loss=LOSSES["mse"])
        rates: list[float] = []

        class Rate(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                rates.append(learning_rate(self.model))

        evaluator = DeviceEvaluator(ds.log_mass[160:200], monitor="val_residual_std")
        fit_on_device(model, data, loss=LOSSES["mse"], batch_size=32, seed=0, initial_epoch=0,
                      epochs=4, evaluator=evaluator, dispatch="epoch", pipeline=pipeline,
                      callbacks=[Rate()] + ([Shrink(shrink)] if shrink is not None else []))
        return evaluator.history, rates

    (ahead, ahead_rates), (in_turn, in_turn_rates) = run(True), run(False)
    assert ahead.keys() == in_turn.keys()
    for key, values in in_turn.items():
        np.testing.assert_allclose(ahead[key], values, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(ahead_rates, in_turn_rates, rtol=1e-6)
    assert in_turn_rates[0] > in_turn_rates[-1]  # the cosine schedule, read at each epoch's end


@pytest.mark.parametrize("kind", ["file", "in /proc", "unwritable", "world-writable"])
def test_a_cache_folder_that_cannot_serve_turns_the_cache_off_in_one_line(tmp_path, caplog, kind):
    # Rule: HPO_JAX_CACHE naming a file, a folder this user cannot write, or one others can write
    # (its entries are compiled code the workers run) turns the cache off with one warning line
    # naming the folder and why; training goes on without it. Nothing is set in JAX's config.
    import jax

    from hpo.training import device

    folder = tmp_path / "cache"
    if kind == "file":
        folder.write_text("not a folder")
    elif kind == "in /proc":
        folder = Path("/proc/xray-hpo-cache")
    else:
        folder.mkdir()
        folder.chmod(0o500 if kind == "unwritable" else 0o777)
    if kind == "unwritable" and os.access(folder, os.W_OK):
        pytest.skip("running as root: every folder is writable")
    before = jax.config.jax_compilation_cache_dir
    with caplog.at_level("WARNING", logger="hpo.training.device"):
        assert device.compilation_cache(str(folder)) is None
    assert jax.config.jax_compilation_cache_dir == before
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"JAX compilation cache off: {folder} ")
    assert {"file": "is not a folder", "in /proc": "cannot be made", "unwritable": "cannot be written",
            "world-writable": "can be written by other users"}[kind] in line
