"""Custom Keras layers saved with the model: the counts transform, the exposure scaling,
dihedral augmentation and the calibration of the output (a shift of log mass, a scale of sigma).

    python -m pytest tests/inference/test_layers.py

A saved network names each layer "hpo>ClassName". hpo registers the names (register(), called
by hpo.model) so that the networks it saves carry them; loading passes CUSTOM_OBJECTS instead, so
that a model's own copy of this file never replaces the classes hpo registered.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

TRANSFORMS = ("none", "log1p", "asinh", "sqrt")


class CountsTransform(keras.layers.Layer):
    """Pointwise transform of photon counts (none, log1p, asinh, sqrt); no weights."""

    def __init__(self, kind: str = "log1p", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {kind!r}")
        self.kind = kind

    def call(self, x: Any) -> Any:
        if self.kind == "log1p":
            return ops.log1p(x)
        if self.kind == "asinh":
            return ops.arcsinh(x)
        if self.kind == "sqrt":
            return ops.sqrt(x)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


class ExposureScale(keras.layers.Layer):
    """Counts at a reference exposure: images (N, H, W, C) x ref_s / exposure (N, 1); no weights.

    Turns counts into rates in the unit of the training split's median exposure, so that the
    counts transform and the standardisation see numbers of the size they were fitted on.
    """

    def __init__(self, ref_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not ref_s > 0:
            raise ValueError(f"ref_s must be > 0 s, got {ref_s}")
        self.ref_s = float(ref_s)

    def call(self, images: Any, exposure: Any) -> Any:
        scale = self.ref_s / ops.cast(exposure, images.dtype)
        return images * ops.reshape(scale, (-1, 1, 1, 1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ref_s": self.ref_s}


class LogExposure(keras.layers.Layer):
    """Standardised log10 exposure, (log10 t - mean) / std, from (N, 1) seconds; no weights."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)

    def call(self, exposure: Any) -> Any:
        return (ops.log10(ops.cast(exposure, self.compute_dtype)) - self.mean) / self.std

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


class RandomDihedral(keras.layers.Layer):
    """Random flips and/or right-angle rotations of square images, per sample, in training only.

    With both on, every one of the 8 symmetries of the square is equally likely; with `rot90`
    alone, one of the 4 rotations. Pixels are only moved, never interpolated, so counts are kept.
    """

    def __init__(self, flips: bool = True, rot90: bool = True, seed: int | None = None, **kw: Any):
        super().__init__(**kw)
        self.flips, self.rot90, self.seed = flips, rot90, seed
        self._rng = keras.random.SeedGenerator(seed)

    def call(self, x: Any, training: bool = False) -> Any:
        if not training or not (self.flips or self.rot90):
            return x
        batch = ops.shape(x)[0]
        draws = keras.random.uniform((batch, 3), seed=self._rng) < 0.5
        flip_h, flip_v, transpose = draws[:, 0], draws[:, 1], draws[:, 2]
        if not self.rot90:
            transpose = ops.zeros_like(transpose)
        elif not self.flips:
            # A rotation is a transpose plus one flip, or two flips: flip_v = flip_h xor transpose.
            flip_v = ops.not_equal(flip_h, transpose)

        def where(mask: Any, a: Any, b: Any) -> Any:
            return ops.where(ops.reshape(mask, (-1, 1, 1, 1)), a, b)

        x = where(transpose, ops.transpose(x, (0, 2, 1, 3)), x)
        x = where(flip_h, ops.flip(x, axis=2), x)
        return where(flip_v, ops.flip(x, axis=1), x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "flips": self.flips, "rot90": self.rot90, "seed": self.seed}


class SigmaScale(keras.layers.Layer):
    """[mu, sigma] (N, 2) to [mu, sigma x scale]; `scale` a weight that training leaves alone (1
    while the network learns), set from the validation split after it (train.calibrate_sigma)."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="scale")

    def call(self, x: Any) -> Any:
        return ops.concatenate([x[:, :1], x[:, 1:] * self.scale], axis=-1)


class LogMassShift(keras.layers.Layer):
    """Adds a calibrated shift to log mass, the first column of the output (N, 1 or 2).

    The shift is piecewise linear in log10 exposure through `bins` knots and constant beyond the
    end knots (numpy's `np.interp`); with one knot, or without an exposure input, it is one
    constant. Zero while the network learns; set from calibration clusters after it
    (train.calibrate_bias).
    """

    def __init__(self, bins: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)

    def build(self, x_shape: Any, exposure_shape: Any = None) -> None:
        self.knots = self.add_weight(shape=(self.bins,), initializer="zeros", trainable=False,
                                     name="log_exposure_knots")
        self.shift = self.add_weight(shape=(self.bins,), initializer="zeros", trainable=False, name="shift")

    def call(self, x: Any, exposure: Any = None) -> Any:
        shift = ops.reshape(self.shift[0], (1, 1)) * ops.ones_like(x[:, :1])
        if exposure is not None and self.bins > 1:
            t = ops.log10(ops.cast(exposure, x.dtype))
            width = self.knots[1:] - self.knots[:-1]  # (bins - 1,)
            slope = (self.shift[1:] - self.shift[:-1]) / ops.maximum(width, 1e-9)
            # Each segment adds its slope times the part of [knot_i, knot_i+1] that lies below t.
            inside = ops.minimum(ops.maximum(t - self.knots[:-1], 0.0), width)
            shift = shift + ops.sum(slope * inside, axis=-1, keepdims=True)
        return ops.concatenate([x[:, :1] + shift, x[:, 1:]], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins}


LAYERS = (CountsTransform, ExposureScale, LogExposure, RandomDihedral, SigmaScale, LogMassShift)
PACKAGE = "hpo"  # every saved network names its layers "hpo>ClassName"
CUSTOM_OBJECTS = {f"{PACKAGE}>{cls.__name__}": cls for cls in LAYERS}


def register() -> None:
    """Registers LAYERS under PACKAGE, so that the networks this process saves name them so."""
    for cls in LAYERS:
        keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def load_network(path: Any) -> keras.Model:
    """The saved Keras network at `path` (.keras), its layers taken from this file."""
    return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
