"""The training loop: one run of one configuration on one data set, read top to bottom.

    hpo train run.yaml
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hpo.config.tree import RunConfig
from hpo.data.contract import Dataset
from hpo.data.contract import load_dataset
from hpo.data.lazy import H5Source
from hpo.data.split import Split
from hpo.data.split import split_indices
from hpo.errors import ConfigError
from hpo.errors import DataContractError
from hpo.errors import first_line
from hpo.errors import TrialFailed
from hpo.model.builder import build_model
from hpo.model.builder import LOG_MASS_SHIFT
from hpo.model.builder import SIGMA_SCALE
from hpo.model.builder import InputStats
from hpo.model.losses import LOSSES
from hpo.model.metrics import residual_metrics
from hpo.model.metrics import streaming_metrics
from hpo.pipeline import fit_inputs
from hpo.training.callbacks import EpochEvaluator
from hpo.training.callbacks import MONITOR
from hpo.training.checkpoint import CheckpointFile
from hpo.training.checkpoint import Checkpointing
from hpo.training.checkpoint import mismatch
from hpo.training.checkpoint import restore
from hpo.training.checkpoint import TrainingState
from hpo.training.calibrate import bias_shift
from hpo.training.calibrate import Shift
from hpo.training.calibrate import shift_bins
from hpo.training.calibrate import sigma_scale
from hpo.training.calibrate import too_few
from hpo.training.evaluate import predict
from hpo.training.optimizers import build_optimizer
from hpo.training.stop import StopCheck

_logger = logging.getLogger(__name__)

STATS_SAMPLE = 4096  # training clusters the input statistics are fitted on


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        model: the trained network, at its best epoch when restore_best_weights is on.
        history: per-epoch values of loss, val_* and train_* metrics.
        best_epoch: 0-based epoch of the lowest monitored metric (default val_residual_std).
        val_metrics: residual metrics of `model` on the validation split (with TTA if configured).
        epochs_run: epochs actually trained (early stopping or pruning can cut the run short).
        seconds: wall time of the fit.
        sigma_scale: with train.calibrate_sigma, the factor on sigma fitted on the calibration
            clusters (val_metrics are the calibrated model's), else None.
        shift: with train.calibrate_bias, the shift of log mass fitted on them, else None.
        training_path: which loop trained it (train.loop): "fit" (Keras' model.fit) or "device"
            (device_loop.py).
        resumed_from: epochs taken from a checkpoint rather than trained here (0: none).
        checkpoint_seconds: time the run's own thread spent on checkpoints.
    """

    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    val_metrics: dict[str, float]
    epochs_run: int
    seconds: float
    split: Split = field(repr=False)
    sigma_scale: float | None = None
    shift: Shift | None = None
    training_path: str = "fit"
    resumed_from: int = 0
    checkpoint_seconds: float = 0.0


def prepare(cfg: RunConfig, ds: Dataset | H5Source) -> tuple[Dataset | H5Source, Split]:
    """The clusters a run may use and their deterministic split (first `max_clusters` only)."""
    n = len(ds) if cfg.data.max_clusters is None else min(cfg.data.max_clusters, len(ds))
    split = split_indices(
        n,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.data.split_seed,
    )
    return ds, split


def train(
    cfg: RunConfig,
    ds: Dataset | H5Source,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    monitor: str = MONITOR,
    checkpoint: CheckpointFile | None = None,
    resume: TrainingState | None = None,
    on_resume: Callable[[TrainingState], None] | None = None,
) -> TrainResult:
    """Trains the configured network on the training split, scoring the validation split each epoch.

    Args:
        cfg: the resolved run config.
        ds: the whole data set, in memory or streamed from disk; it is split here by `cfg.data`
            (the test split is never touched).
        callbacks: extra Keras callbacks (pruning, tracking); they see the val_* metrics in `logs`.
        verbose: Keras fit verbosity.
        monitor: the val_* metric that picks the best epoch and drives early stopping (a study's
            study.metric).
        checkpoint: where the training state is saved at epoch ends (checkpoint.py); None: nowhere.
        resume: a state to go on from (a checkpoint of this config and data): the run trains
            the epochs after it, as the run that saved it would have.
        on_resume: called with `resume` once the model holds it, before the next epoch.

    Raises:
        TrialFailed: the loss or the predictions became non-finite, or memory ran out.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        run = _Run(cfg, ds, callbacks=callbacks, monitor=monitor, checkpoint=checkpoint,
                   resume=resume)
        t0 = time.perf_counter()
        resume = run.resume
        for n, (loss_name, first, last) in enumerate(run.phases):
            if getattr(run.model, "stop_training", False):
                break
            if resume is not None and resume.epoch >= last and n < len(run.phases) - 1:
                continue  # a phase the interrupted run had finished
            run.compile_for(loss_name, last - first)
            if resume is not None:
                # A checkpoint at a phase's first epoch holds the previous phase's optimizer.
                run.evaluator.set_model(run.model)
                restore(run.model, run.evaluator, resume, with_optimizer=resume.epoch > first)
                first = run.resumed_from = resume.epoch
                if on_resume is not None:
                    on_resume(resume)
                resume = None
                if first >= last or run.model.stop_training:
                    continue
            run.fit(first, last, verbose)
    except MemoryError as exc:
        raise TrialFailed(f"out of memory: {exc}") from exc
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if checkpoint is not None:
            checkpoint.wait()  # an interrupted run's last checkpoint lands before it goes
    return run.result(time.perf_counter() - t0)


def train_fused(
    cfgs: Sequence[RunConfig],
    ds: Dataset | H5Source,
    *,
    callbacks: Sequence[Sequence[keras.callbacks.Callback]] | None = None,
    monitor: str = MONITOR,
    checkpoints: Sequence[CheckpointFile | None] | None = None,
    strategy: str = "auto",
) -> list[TrainResult | BaseException]:
    """Trains configs of one fusion key (fusion.py) on the device path as one program
    (fused.py), each as train() would train it alone; one's failure or pruning is its own.

    Args:
        cfgs: the members' resolved run configs, all with train.loop device.
        callbacks: each member's extra callbacks, as train()'s.
        checkpoints: each member's checkpoint file (saved at its epoch ends), or None; a member
            with a checkpoint to resume trains alone (train()), not here.
        strategy: fused.fit_fused's.

    Returns:
        Per member, its TrainResult, or the exception that ended it (optuna.TrialPruned,
        TrialFailed, ...), for its trial to raise.

    Raises:
        ConfigError: the configs do not share one fusion key, or one is not on the device path.
    """
    from hpo.training import fused
    from hpo.training.fusion import fusion_key

    keys = {fusion_key(c) for c in cfgs}
    if len(keys) > 1 or any(c.train.loop != "device" for c in cfgs):
        raise ConfigError("train_fused takes configs of one fusion key on train.loop device "
                          f"({len(keys)} keys given)")
    n = len(cfgs)
    callbacks = callbacks or [()] * n
    checkpoints = checkpoints or [None] * n
    policy = keras.mixed_precision.global_policy()
    outcome: list[TrainResult | BaseException | None] = [None] * n
    runs: list[_Run | None] = [None] * n
    try:
        for i, cfg in enumerate(cfgs):
            try:
                runs[i] = _Run(cfg, ds, callbacks=callbacks[i], monitor=monitor,
                               checkpoint=checkpoints[i], resume=None)
            except Exception as exc:  # noqa: BLE001  (this member's own end)
                outcome[i] = exc
        t0 = time.perf_counter()
        live = [i for i in range(n) if runs[i] is not None]
        phases = runs[live[0]].phases if live else []  # type: ignore[union-attr]
        for loss_name, start, last in phases:
            live = [i for i in live if not getattr(runs[i].model, "stop_training", False)]
            if not live:
                break
            members = []
            for i in live:
                run = runs[i]
                assert run is not None and isinstance(run.evaluator, fused.DeviceEvaluator)
                run.compile_for(loss_name, last - start)
                members.append(fused.Member(run.model, run.evaluator, run.cfg.train.seed,
                                            callbacks=run.callbacks))
            first = runs[live[0]]
            assert first is not None
            try:
                fused.fit_fused(members, first.device_data(), loss=first.model.loss,
                                batch_size=first.cfg.train.batch_size, initial_epoch=start,
                                epochs=last, dispatch=first.cfg.train.device_dispatch,
                                strategy=strategy)
            except MemoryError as exc:
                for m in members:
                    m.error = TrialFailed(f"out of memory: {exc}")
            for i, m in zip(live, members, strict=True):
                if m.error is not None:
                    outcome[i] = m.error
            live = [i for i in live if outcome[i] is None]
        seconds = time.perf_counter() - t0
    finally:
        keras.mixed_precision.set_global_policy(policy)
        for checkpoint in checkpoints:
            if checkpoint is not None:
                checkpoint.wait()
    for i, run in enumerate(runs):
        if run is not None and outcome[i] is None:
            try:
                outcome[i] = run.result(seconds)
            except Exception as exc:  # noqa: BLE001
                outcome[i] = exc
    return outcome  # type: ignore[return-value]


def checkpoint_after_record(callbacks: Sequence[keras.callbacks.Callback],
                            saving: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """The run's callbacks (after its evaluator) with the checkpoint after those that record
    the epoch (epoch log, pruning report) and before a stop request ends the run there.

    A checkpoint is then never ahead of the study: an epoch whose report was refused (a peer
    failed the trial as lost) or cut by a SIGKILL is not in it, so the trial's copy resumes at
    an epoch the study holds, and a lost worker writes nothing into the folder its copy uses.
    """
    stops = [i for i, c in enumerate(callbacks) if isinstance(c, StopCheck)]
    at = stops[0] if stops else len(callbacks)
    return [*callbacks[:at], *saving, *callbacks[at:]]


class _Run:
    """One run between its setup and its result: the data, the network, its evaluator and
    callbacks (train() trains it alone, train_fused with others)."""

    def __init__(self, cfg: RunConfig, ds: Dataset | H5Source, *,
                 callbacks: Sequence[keras.callbacks.Callback], monitor: str,
                 checkpoint: CheckpointFile | None, resume: TrainingState | None) -> None:
        if ds.log_mass is None:
            raise TrialFailed(f"{ds.path}: no 'log_mass' to train on", kind="data")
        exposure = cfg.model.use_exposure
        if exposure and ds.exposure_s is None:
            raise DataContractError(
                f"{ds.path}: missing key 'exposure_s' (each cluster's exposure, s), which "
                "model.use_exposure needs; hpo simulate writes it, or set model.use_exposure: false")
        self.on_device = on_device = cfg.train.loop == "device"
        if on_device and keras.backend.backend() != "jax":
            raise ConfigError(f"train.loop device needs Keras' JAX backend, this process runs "
                              f"{keras.backend.backend()}: set KERAS_BACKEND=jax, or train.loop: fit")
        self.cfg, self.monitor, self.checkpoint = cfg, monitor, checkpoint
        self.resumed_from = 0
        # ------------------------------------------------------------ setup
        keras.utils.set_random_seed(cfg.train.seed)
        if cfg.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        ds, split = prepare(cfg, ds)
        self.ds, self.split = ds, split
        self.va = va = ds.subset(split.val)
        # The input statistics need only a sample of the training split (a streamed file is
        # not read whole).
        sample = np.sort(np.random.default_rng(cfg.train.seed).permutation(split.train)[:STATS_SAMPLE])
        tr_sample = ds.subset(sample)
        assert ds.log_mass is not None and va.log_mass is not None
        self.feed = {} if on_device else fit_inputs(ds, split.train, cfg.train.batch_size,
                                                     cfg.train.seed, exposure=exposure)
        self.cal, self.bins = calibration_set(cfg, ds, va)

        # ------------------------------------------------------------ model
        loss_cfg = cfg.train.loss
        self.sigma_head = sigma_head = (loss_cfg.sigma_param if loss_cfg.type == "gaussian_nll"
                                        else None)
        stats = InputStats.fit(tr_sample.images, ds.redshift[split.train], ds.log_mass[split.train],
                               cfg.model.input.transform,
                               exposure=tr_sample.exposure_s if exposure else None,
                               exposure_mode=cfg.model.exposure_mode)
        try:
            self.model = build_model(
                cfg.model,
                image_shape=ds.image_shape,
                stats=stats,
                sigma_head=sigma_head,
                augment=cfg.train.augment,
                seed=cfg.train.seed,
                calibrate_sigma=cfg.train.calibrate_sigma,
                calibrate_bias_bins=self.bins,
            )
        except ValueError as exc:  # Keras refusing a layer: no network has this shape
            shape = " x ".join(map(str, ds.image_shape))
            raise TrialFailed(f"the network cannot be built on {shape} images: {first_line(exc)}",
                              kind="config") from exc
        self.steps = int(np.ceil(len(split.train) / cfg.train.batch_size))

        if on_device:
            from hpo.training import device_loop  # imports JAX

            self.evaluator: EpochEvaluator = device_loop.DeviceEvaluator(
                va.log_mass, patience=cfg.train.early_stopping_patience, monitor=monitor)
        else:
            self.evaluator = EpochEvaluator(
                (va.images, va.redshift, va.log_mass), patience=cfg.train.early_stopping_patience,
                monitor=monitor, exposure=va.exposure_s if exposure else None,
            )
        saving = [] if checkpoint is None else [Checkpointing(
            checkpoint, self.evaluator, resume.learning_rate if resume is not None else None)]
        self.callbacks = checkpoint_after_record(callbacks, saving)
        if resume is not None and (why := mismatch(self.model, resume)):
            _logger.warning("checkpoint %s is refused: %s; the trial starts from epoch 0",
                            checkpoint.path if checkpoint else "", why)
            resume = None
        self.resume = resume
        warm = min(loss_cfg.warm_start_epochs, cfg.train.epochs) if sigma_head else 0
        # The mean first, with MSE; the likelihood then only has to learn sigma and refine.
        self.phases = [(name, first, last) for name, first, last in
                       (("mse", 0, warm), (loss_cfg.type, warm, cfg.train.epochs)) if last > first]

    def compile_for(self, loss_name: str, epochs: int) -> None:
        cfg = self.cfg
        self.model.compile(
            optimizer=build_optimizer(cfg.train.optimizer, cfg.train.schedule, self.steps, epochs),
            loss=LOSSES[loss_name],
            metrics=streaming_metrics(with_sigma=self.sigma_head is not None),
            jit_compile=cfg.train.jit_compile,
        )

    def device_data(self) -> Any:
        """The split's clusters on the device (device_data.place: once per worker and split)."""
        from hpo.training.device_data import place

        return place(self.ds, self.split.train, self.split.val,
                     exposure=self.cfg.model.use_exposure)

    def fit(self, first: int, last: int, verbose: int = 0) -> None:
        """Epochs first .. last - 1 through model.fit, or through the device loop."""
        if not self.on_device:
            self.feed["x"].start_at(first)
            self.model.fit(**self.feed, initial_epoch=first, epochs=last,
                           callbacks=[self.evaluator, *self.callbacks], verbose=verbose)
            return
        from hpo.training import device_loop

        assert isinstance(self.evaluator, device_loop.DeviceEvaluator)
        device_loop.fit_on_device(
            self.model, self.device_data(), loss=self.model.loss,
            batch_size=self.cfg.train.batch_size, seed=self.cfg.train.seed, initial_epoch=first,
            epochs=last, evaluator=self.evaluator, callbacks=self.callbacks,
            dispatch=self.cfg.train.device_dispatch)

    def result(self, seconds: float) -> TrainResult:
        """The trained run's result: its best epoch restored (restore_best_weights), scored
        and calibrated on the validation (or calibration) clusters."""
        cfg, model, evaluator, va, cal, bins = (self.cfg, self.model, self.evaluator, self.va,
                                                self.cal, self.bins)
        if cfg.train.restore_best_weights:
            evaluator.restore_best()
        # One pass over the validation split gives the final metrics (and calibrates, unless a
        # file of its own does); the calibration is applied to these predictions as the model
        # applies it now.
        tta = cfg.train.augment.tta
        mu, sigma = predict(model, va.images, va.redshift, exposure=va.exposure_s, tta=tta)
        cal_mu, cal_sigma = (mu, sigma) if cal is va else predict(
            model, cal.images, cal.redshift, exposure=cal.exposure_s, tta=tta)
        shift = scale = None
        if bins is not None:
            assert cal.log_mass is not None
            # One bin (shift_bins' rule for a model without the exposure) is one shift whatever
            # it is.
            shift = bias_shift(cal_mu, cal.log_mass, cal.exposure_s, bins)
            layer = model.get_layer(LOG_MASS_SHIFT)
            layer.knots.assign(shift.log_exposure_knots.astype("float32"))
            layer.shift.assign(shift.shift.astype("float32"))
            mu = shift(mu, va.exposure_s)
            cal_mu = mu if cal is va else shift(cal_mu, cal.exposure_s)
        if cfg.train.calibrate_sigma:
            assert cal.log_mass is not None
            scale = sigma_scale(cal_mu, cal_sigma, cal.log_mass)  # on shifted residuals, if shifted
            model.get_layer(SIGMA_SCALE).scale.assign(scale)
            sigma = sigma * scale
        assert va.log_mass is not None
        return TrainResult(
            model=model,
            history=evaluator.history,
            best_epoch=evaluator.best_epoch,
            val_metrics=residual_metrics(mu, va.log_mass, sigma),
            epochs_run=len(evaluator.history.get(self.monitor, [])),
            seconds=seconds,
            split=self.split,
            sigma_scale=scale,
            shift=shift,
            training_path=cfg.train.loop,
            resumed_from=self.resumed_from,
            checkpoint_seconds=self.checkpoint.seconds if self.checkpoint is not None else 0.0,
        )


def calibration_set(cfg: RunConfig, ds: Dataset | H5Source, va: Dataset | H5Source
                    ) -> tuple[Dataset | H5Source, int | None]:
    """The clusters that calibrate the trained model (data.calibration_path, else the validation
    split) and the bins of its log-mass shift (None without train.calibrate_bias); checked before
    any training, so that a run never trains to fail at its end."""
    if not (cfg.train.calibrate_bias or cfg.train.calibrate_sigma):
        return va, None  # nothing to calibrate: a calibration file is not even read
    path = cfg.data.calibration_path
    cal = va if path is None else read_calibration(path)
    why = same_clusters(cal, ds) if path is not None else ""
    if why:
        raise DataContractError(
            f"{path}: holds the training file's clusters ({why}); calibration "
            "clusters must be ones no model trained on: simulate them with another seed")
    if path is not None and cal.image_shape != ds.image_shape:
        raise DataContractError(
            f"{path}: key 'images' holds {' x '.join(map(str, cal.image_shape))} images, the training "
            f"file {' x '.join(map(str, ds.image_shape))}; a calibration file must match it")
    if path is not None and cfg.model.use_exposure and cal.exposure_s is None:
        raise DataContractError(f"{path}: missing key 'exposure_s', which model.use_exposure needs")
    why = too_few(cfg, len(cal), f"{path} holds" if path is not None else "the validation split holds")
    if why:
        raise TrialFailed(why, kind="config")
    bins = shift_bins(cfg)
    return cal, bins


def read_calibration(path: str | Path) -> Dataset:
    """The calibration file, read once per process while it is unchanged: a worker's trials share
    it, as they share the training file the worker opened."""
    path = Path(path)
    if not path.is_file():
        return load_dataset(path)  # says what is wrong with it
    stat = path.stat()
    return _read_calibration(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_calibration(path: str, mtime_ns: int, size: int) -> Dataset:
    return load_dataset(path)


def same_clusters(a: Dataset | H5Source, b: Dataset | H5Source) -> str:
    """Why two files hold the same clusters (one file; one simulator seed, which draws the same
    clusters at every depth; the same redshifts and masses), or '' when they do not."""
    if a.path is not None and b.path is not None and Path(a.path).resolve() == Path(b.path).resolve():
        return "it is the same file"
    made_by = [(x.attrs.get("generator"), x.attrs.get("seed")) for x in (a, b)]
    if None not in made_by[0] and made_by[0] == made_by[1]:
        return f"both simulated with seed {int(a.attrs['seed'])}"
    n = min(len(a), len(b), 100)
    if n and np.array_equal(a.redshift[:n], b.redshift[:n]) and a.log_mass is not None \
            and b.log_mass is not None and np.array_equal(a.log_mass[:n], b.log_mass[:n]):
        return "the same redshifts and masses"
    return ""
