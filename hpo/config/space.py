"""The search-space file: study settings, base overrides and dotted-path distributions.

    hpo launch search_spaces/dropout.yaml --dry-run

    study:  {name: dropout, sampler: {type: tpe, seed: 0}, pruner: {type: median}, n_trials: 30}
    data:   {path: data/mock.h5}                       # overrides of the config's data section
    base:   {train: {epochs: 400, batch_size: 200}}     # overrides of the default run config
    params: {model.dropout.rate: {float: [0.0, 0.5], step: 0.05}}

`study.engine: keras_tuner` searches the same params with keras-tuner instead of Optuna
(hpo/engines/keras_tuner.py), configured by `study.tuner`.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any
from typing import Literal

import yaml
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import model_validator

from hpo.config.overrides import apply_overrides
from hpo.config.overrides import check_path
from hpo.config.overrides import flatten
from hpo.config.overrides import read_yaml
from hpo.config.tree import RunConfig
from hpo.config.tree import SEED_MAX
from hpo.errors import ConfigError
from hpo.keys import METRIC

Scalar = bool | int | float | str | None
# The most points of a grid study: each is a trial, and Optuna's grid sampler holds them all.
GRID_MAX = 1_000_000
# study.metric -> the residual_metrics name it reads (val_nll needs a model with a sigma head)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Distribution(_Strict):
    """One parameter's range: exactly one of float, int or categorical."""

    float_: tuple[float, float] | None = Field(None, alias="float", description="[low, high]")
    int_: tuple[int, int] | None = Field(None, alias="int", description="[low, high], inclusive")
    categorical: list[Any] | None = Field(None, description="choices; lists become JSON strings")
    step: float | None = Field(None, gt=0, description="grid step for float and int")
    log: bool = Field(False, description="sample on a log scale")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [k for k in ("float_", "int_", "categorical") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [low, high], int: [low, high], categorical: [...]")
        rng = self.float_ or self.int_
        if rng is not None and not rng[0] <= rng[1]:
            raise ValueError(f"low must be <= high, got {list(rng)}")
        if self.log and rng is not None and rng[0] <= 0:
            raise ValueError(f"a log range needs low > 0, got {list(rng)}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.categorical is not None and not self.categorical:
            raise ValueError("categorical needs at least one choice")
        if self.int_ is not None and self.step is not None and self.step != int(self.step):
            raise ValueError(f"the step of an int range must be a whole number, got {self.step}")
        if self.float_ is not None:  # each end is finite, yet high - low may not be
            lo, hi = self.float_
            if not math.isfinite(hi - lo):
                raise ValueError(f"high - low must be a finite number, got {[lo, hi]}")
            if self.step is not None and not math.isfinite((hi - lo) / self.step):
                raise ValueError(f"step {self.step} is too small for the range {[lo, hi]}")
        for choice in self.categorical or []:
            _check_choice(choice)
        return self

    def size(self) -> int | None:
        """How many values grid() holds (without making them), or None when it is continuous."""
        if self.categorical is not None:
            return len(self.categorical)
        if self.int_ is not None:
            return (self.int_[1] - self.int_[0]) // int(self.step or 1) + 1
        if self.float_ is not None and self.step is not None:
            lo, hi = self.float_
            return int(math.floor((hi - lo) / self.step + 1e-9)) + 1
        return None

    def grid(self) -> list[Any] | None:
        """Every value of a discrete distribution, or None when it is continuous."""
        if self.categorical is not None:
            return [encode_choice(c) for c in self.categorical]
        if self.int_ is not None:
            return list(range(self.int_[0], self.int_[1] + 1, int(self.step or 1)))
        if self.float_ is not None and self.step is not None:
            lo, hi = self.float_
            n = int(math.floor((hi - lo) / self.step + 1e-9)) + 1
            return [round(lo + i * self.step, 12) for i in range(n)]
        return None


class SamplerSpec(_Strict):
    type: Literal["grid", "random", "qmc", "tpe", "cmaes"] = "tpe"
    seed: int | None = Field(0, ge=0, le=SEED_MAX)
    options: dict[str, Any] = Field({}, description="extra keyword arguments of the Optuna sampler")


class PrunerSpec(_Strict):
    type: Literal["none", "median", "percentile", "hyperband", "successive_halving"] = "median"
    n_startup_trials: int = Field(3, ge=0)
    n_warmup_steps: int = Field(2, ge=0, description="epochs before a trial may be pruned")
    options: dict[str, Any] = {}


class TunerSpec(_Strict):
    """keras-tuner's search (engine: keras_tuner); Hyperband's max_epochs is base train.epochs."""

    type: Literal["hyperband", "random", "bayesian"] = "hyperband"
    factor: int = Field(3, ge=2, description="hyperband: each round keeps 1/factor of its trials")
    hyperband_iterations: int = Field(1, ge=1, description="hyperband: sweeps over all brackets")
    warm_start: bool = Field(
        True, description="hyperband: a promoted trial resumes from its parent's weights "
        "(false: it trains from scratch for all its epochs)"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="the oracle's seed")
    max_trials: int | None = Field(
        None, ge=1, description="random/bayesian: trials to run; default study.n_trials"
    )

    @model_validator(mode="after")
    def _keys_of_type(self) -> TunerSpec:
        hyperband_only = {"factor", "hyperband_iterations", "warm_start"} & self.model_fields_set
        if self.type != "hyperband" and hyperband_only:
            keys = ", ".join(sorted(hyperband_only))
            raise ValueError(f"{keys}: only for type hyperband, got type {self.type}")
        if self.type == "hyperband" and self.max_trials is not None:
            raise ValueError(
                "max_trials: hyperband's trial count follows from train.epochs, factor and "
                "hyperband_iterations; leave it out"
            )
        return self

    def hyperband_rounds(self, max_epochs: int) -> list[tuple[int, int, int, int]]:
        """(bracket, round, trials, epochs each trial has trained by its end) of one Hyperband
        iteration, in keras-tuner 1.4's order and sizes (HyperbandOracle._get_size/_get_epochs)."""
        brackets, e = 0, float(max_epochs)
        while e >= 1:
            e, brackets = e / self.factor, brackets + 1
        end0 = math.ceil(1 + math.log(max_epochs, self.factor))
        return [
            (b, r, math.ceil(end0 / (b + 1) * self.factor ** (b - r)),
             math.ceil(max_epochs / self.factor ** (b - r)))
            for b in range(brackets - 1, -1, -1)
            for r in range(b + 1)
        ]

    def hyperband_budget(self, max_epochs: int) -> tuple[int, int]:
        """(trials, epochs trained) of the whole Hyperband search when no trial fails."""
        trials = epochs = 0
        previous = 0
        for _, r, n, cumulative in self.hyperband_rounds(max_epochs):
            start = previous if (r > 0 and self.warm_start) else 0
            trials, epochs = trials + n, epochs + n * (cumulative - start)
            previous = cumulative
        return trials * self.hyperband_iterations, epochs * self.hyperband_iterations


class StudySpec(_Strict):
    """A study's settings.

    engine: optuna (default) runs the study through Optuna workers (sampler, pruner); keras_tuner
    runs it in `hpo launch`'s process with keras-tuner as set by `tuner`, and ignores sampler,
    pruner, heartbeat_s, grace_s and max_retry (Optuna-only settings).
    """

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    metric: Literal["val_residual_std", "val_rmse", "val_nll"] = Field(
        METRIC, description="minimised; pruning, early stopping and the best epoch "
        "follow it; residual std ignores a constant bias, rmse does not; nll needs "
        "train.loss.type gaussian_nll"
    )
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    n_trials: int | None = Field(None, ge=1, description="COMPLETE + PRUNED trials; grid: its size")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this long")
    repeats: int = Field(
        1, ge=1, le=GRID_MAX, description="seeds per grid point (train.seed 0..repeats-1)"
    )
    heartbeat_s: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_s: int | None = Field(
        None, ge=1, description="a RUNNING trial silent this long is failed and re-queued; "
        "default 4 x heartbeat_s; keep it above the longest database outage you expect"
    )
    max_retry: int = Field(2, ge=0, description="times a lost trial's parameters are re-queued")
    checkpoint: Literal["every_epoch", "every_k", "off"] = Field(
        "every_epoch", description="when a trial saves its training state, so that its copy "
        "resumes there if the trial is interrupted or its worker lost (every_k: every "
        "checkpoint_every epochs); engine optuna"
    )
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoints, with every_k")
    checkpoint_dir: str = Field(
        "checkpoints", min_length=1, description="where trials keep their checkpoints, a folder "
        "every worker can write (relative: to the folder workers run in, as data.path); "
        "<checkpoint_dir>/<study>/trial-<n>/, removed when the trial ends"
    )
    fuse: int = Field(
        1, ge=1, le=64, description="trials a worker takes at once and trains, those whose "
        "networks share one shape (training/fusion.py), as one program; needs train.loop device "
        "(Keras' JAX backend); 1: one trial at a time"
    )
    engine: Literal["optuna", "keras_tuner"] = "optuna"
    tuner: TunerSpec | None = Field(None, description="engine keras_tuner only; default hyperband")
    enqueue: list[dict[str, Any]] = Field(
        [], description="points run first, each {param path: value} (a known-good configuration, "
        "or the best of an earlier study); params left out are sampled; counted in n_trials"
    )

    @model_validator(mode="after")
    def _tuner_with_engine(self) -> StudySpec:
        if self.tuner is not None and self.engine != "keras_tuner":
            raise ValueError(
                f"tuner is only read with engine: keras_tuner, got engine {self.engine}"
            )
        if self.engine == "keras_tuner" and self.tuner is None:
            self.tuner = TunerSpec()
        return self

    @model_validator(mode="after")
    def _enqueue_with_optuna(self) -> StudySpec:
        if self.enqueue and (self.engine != "optuna" or self.sampler.type == "grid"):
            raise ValueError(
                "enqueue needs engine optuna and a sampler other than grid (a grid runs every "
                "point anyway)"
            )
        return self

    @model_validator(mode="after")
    def _fuse_with_optuna(self) -> StudySpec:
        if self.fuse > 1 and self.engine != "optuna":
            raise ValueError(f"fuse {self.fuse} needs engine optuna (its workers ask for several "
                             "trials at once); keras_tuner runs one trial at a time")
        return self

    @model_validator(mode="after")
    def _tuner_metric(self) -> StudySpec:
        if self.engine == "keras_tuner" and self.metric != METRIC:
            raise ValueError(
                f"engine keras_tuner minimises val_residual_std only, got metric {self.metric}"
            )
        return self

    @model_validator(mode="after")
    def _grace_above_heartbeat(self) -> StudySpec:
        if self.grace_s is not None and self.grace_s <= self.heartbeat_s:
            raise ValueError(
                f"grace_s must be greater than heartbeat_s, got grace_s={self.grace_s}, "
                f"heartbeat_s={self.heartbeat_s}; leave grace_s out for 4 x heartbeat_s"
            )
        return self


class TrackingSpec(_Strict):
    """What each trial leaves in MLflow beyond its params, metrics and plots."""

    log_models: Literal["all", "improving", "none"] = Field(
        "all", description="all: every COMPLETE trial's model; improving: only a trial that beats "
        "the study's best value at its end; none: no model (promote then refuses)"
    )


class SearchSpace(_Strict):
    """A whole search-space file, validated; `resolved_base()` and `params` drive every trial."""

    study: StudySpec
    tracking: TrackingSpec = TrackingSpec()
    preset: str | None = Field(None, description="named preset (hpo/presets/) applied before base")
    data: dict[str, Any] = {}
    base: dict[str, Any] = {}
    params: dict[str, Distribution] = {}
    source: str = Field("", exclude=True)

    def resolved_base(self) -> RunConfig:
        """The run config every trial starts from: defaults + preset + data + base."""
        from hpo.config.presets import preset_config

        # data: as dotted keys after base's own, so that they win whatever form base gives data.
        data = {f"data.{key}": value for key, value in self.data.items()}
        return apply_overrides({**self.base, **data}, base=preset_config(self.preset, self.source),
                               where=f"{self.source}, base")

    def config_for(self, point: dict[str, Any], where: str, base: RunConfig | None = None) -> RunConfig:
        """The run config of one point of the space, {dotted path: value} (decoded choices), as
        every engine and check builds it: the point's overrides on `resolved_base()` (or `base`,
        the same resolved once by a caller that builds many).

        Raises:
            ConfigError: the point is no valid config; the message names `where`.
        """
        return apply_overrides(point, base=base or self.resolved_base(), where=where)

    def grid(self) -> dict[str, list[Any]]:
        """The full grid, `train.seed` included when repeats > 1.

        Raises:
            ConfigError: a param is continuous, or the grid has more than GRID_MAX points.
        """
        self.grid_size()
        out = {path: dist.grid() or [] for path, dist in self.params.items()}
        if self.study.repeats > 1:
            out["train.seed"] = list(range(self.study.repeats))
        return out

    def grid_size(self) -> int:
        """Points of the full grid (repeats included), counted without making them.

        Raises:
            ConfigError: a param is continuous, or the grid has more than GRID_MAX points.
        """
        sizes = {}
        for path, dist in self.params.items():
            size = dist.size()
            if size is None:
                raise ConfigError(
                    f"{self.source}: params key {path!r}: a grid needs a step or categorical choices"
                )
            sizes[path] = size
        if not self.params:
            return 1
        total = math.prod(sizes.values()) * (self.study.repeats if self.study.repeats > 1 else 1)
        if total > GRID_MAX:
            each = ", ".join(f"{path} {n}" for path, n in sizes.items())
            raise ConfigError(
                f"{self.source}: params: a grid of {total} points ({each}); a grid study runs "
                f"every point, at most {GRID_MAX:,}: take a larger step or fewer choices"
            )
        return total

    def budget(self) -> int:
        """n_trials, defaulting to the grid size for a grid sampler (keras_tuner: tuner_budget)."""
        if self.study.tuner is not None:
            return self.tuner_budget()[0]
        if self.study.n_trials is not None:
            return self.study.n_trials
        if self.study.sampler.type == "grid":
            return self.grid_size()
        raise ConfigError(f"{self.source}: study.n_trials is required for sampler {self.study.sampler.type}")

    def tuner_budget(self) -> tuple[int, int]:
        """keras_tuner: (trials, epochs), both when no trial fails or stops early."""
        tuner = self.study.tuner
        assert tuner is not None
        if tuner.type == "hyperband":
            return tuner.hyperband_budget(self.resolved_base().train.epochs)
        trials = tuner.max_trials or self.study.n_trials
        if trials is None:
            raise ConfigError(
                f"{self.source}: study.tuner.max_trials (or study.n_trials) is required for "
                f"tuner type {tuner.type}"
            )
        return trials, trials * self.resolved_base().train.epochs

    def describe(self) -> str:
        """The validated space as YAML plus its grid size or trial budget (for --dry-run)."""
        lines = [self.to_yaml().rstrip(), "---"]
        tuner = self.study.tuner
        if tuner is not None:
            trials, epochs = self.tuner_budget()
            what = f"engine: keras_tuner; tuner: {tuner.type}"
            if tuner.type == "hyperband":
                what += (
                    f" (max_epochs {self.resolved_base().train.epochs}, factor {tuner.factor}, "
                    f"{tuner.hyperband_iterations} iteration(s), "
                    f"warm_start {str(tuner.warm_start).lower()})"
                )
            lines.append(f"{what}; budget: {trials} trials, {epochs} epochs; "
                         "sampler and pruner are Optuna's and not used")
            discrete = all(d.size() is not None for d in self.params.values())
            points = math.prod(d.size() or 0 for d in self.params.values())
            if discrete and points < trials:
                lines.append(f"note: the space has only {points} distinct points; "
                             "keras-tuner stops the search once it draws no new one")
            return "\n".join(lines)
        if self.study.sampler.type == "grid":
            lines.append(f"grid: {self.grid_size()} points; budget: {self.budget()} trials")
        else:
            lines.append(f"sampler: {self.study.sampler.type}; budget: {self.budget()} trials")
        return "\n".join(lines)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def _check_choice(choice: Any) -> None:
    """Raises ValueError unless `choice` is a JSON value (what Optuna stores and MLflow logs): a
    string, a finite number, true/false, null, or a list or mapping (string keys) of them."""
    try:
        same = json.loads(json.dumps(choice, allow_nan=False)) == choice
    except (TypeError, ValueError, RecursionError):
        same = False
    if not same:
        raise ValueError(
            "a choice must be a finite number, a string, true, false, null, or a list or "
            f"mapping (string keys) of them (got {choice!r})"
        )
    if isinstance(choice, str) and choice[:1] in ("[", "{"):  # see encode_choice
        raise ValueError(
            f"a string choice cannot begin with [ or {{, which marks a list or mapping (got "
            f"{choice!r}); give the list or mapping itself"
        )


def encode_choice(value: Any) -> Scalar:
    """Optuna choices must be scalars: lists and mappings travel as JSON strings (and so no
    string choice may begin with [ or {: _check_choice)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value


def load_space(path: str | Path) -> SearchSpace:
    """Reads and validates a search-space file.

    Raises:
        ConfigError: naming the file, the key and what was expected.
    """
    path = Path(path)
    return parse_space(read_yaml(path), source=str(path))


def parse_space(raw: dict[str, Any], *, source: str) -> SearchSpace:
    """Validates a search space given as a mapping (from a file or a study's stored copy)."""
    try:
        space = SearchSpace.model_validate({**raw, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: key {loc!r}: {msg}{got}{more}") from None
    for path in space.params:
        check_path(path, f"{source}, params")
        if path.split(".")[0] == "data":
            raise ConfigError(
                f"{source}: params key {path!r}: data settings cannot be searched: every trial "
                "must train on the same file and split, and the test split must stay the one "
                "`hpo promote` scores; set it under data: instead")
    for path in flatten(space.base):
        check_path(path, f"{source}, base")
    # Every corner of the space must be a valid config, so a typo in a choice fails now, not in trial 7.
    space.resolved_base()
    if space.study.metric == "val_nll" and space.resolved_base().train.loss.type != "gaussian_nll":
        raise ConfigError(
            f"{source}: key 'study.metric': val_nll needs a sigma head (base train.loss.type "
            "gaussian_nll); use val_rmse or val_residual_std for a point estimator")
    for path, dist in space.params.items():
        # The ends of a numeric range, not every value: an int range may be [0, 2**31].
        values = dist.grid() if dist.categorical is not None else None
        if values is None:
            values = list(dist.float_ or dist.int_ or ())
        for value in values:
            corner = apply_overrides({path: decode_choice(value)}, base=space.resolved_base(),
                                     where=f"{source}: params {path}={value!r}")
            if space.study.metric == "val_nll" and corner.train.loss.type != "gaussian_nll":
                raise ConfigError(
                    f"{source}: params key {path!r}: {value!r} trains without a sigma head, which "
                    "study.metric val_nll needs; use val_rmse or keep train.loss.type gaussian_nll")
    if space.study.fuse > 1 and space.resolved_base().train.loop != "device" and (
            "train.loop" not in space.params):
        raise ConfigError(
            f"{source}: key 'study.fuse': {space.study.fuse} trials train as one program on the "
            "device path only: set base train.loop: device (Keras' JAX backend), or study.fuse: 1")
    for i, point in enumerate(space.study.enqueue):
        _check_point(space, point, f"{source}: key 'study.enqueue.{i}'")
    if space.study.engine == "keras_tuner":
        tuner = space.study.tuner
        if tuner is not None and tuner.type == "hyperband" and "train.epochs" in space.params:
            raise ConfigError(f"{source}: params key 'train.epochs': hyperband sets each "
                              "trial's epochs itself (max_epochs = base train.epochs)")
    elif space.study.sampler.type == "grid":
        space.grid()
    return space


def _check_point(space: SearchSpace, point: dict[str, Any], where: str) -> None:
    """An enqueued point names only params of the space, each with a value its range holds."""
    for path, value in point.items():
        dist = space.params.get(path)
        if dist is None:
            known = ", ".join(space.params) or "none"
            raise ConfigError(f"{where}: {path!r} is not a param of this space (params: {known})")
        if dist.categorical is not None:
            if encode_choice(value) not in (dist.grid() or []):
                raise ConfigError(f"{where}: {path} = {value!r} is not one of {dist.categorical}")
            continue
        lo, hi = dist.int_ or dist.float_  # type: ignore[misc]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        numeric = numeric and (isinstance(value, int) or math.isfinite(value))
        if not numeric or (dist.int_ is not None and value != int(value)) or not lo <= value <= hi:
            kind = "an int" if dist.int_ is not None else "a number"
            raise ConfigError(f"{where}: {path} = {value!r}: expected {kind} in [{lo}, {hi}]")
    apply_overrides({k: decode_choice(encode_choice(v)) for k, v in point.items()},
                    base=space.resolved_base(), where=where)


def enqueue_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The space's enqueued points as Optuna params (choices encoded as the sampler sees them)."""
    return [{k: encode_choice(v) for k, v in point.items()} for point in space.study.enqueue]


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every point of the grid as {path: value}, for dry runs and reports."""
    grid = space.grid()
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
