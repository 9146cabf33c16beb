"""The MLflow pyfunc wrapper that lets plain MLflow load a trained network and predict log mass.

    mlflow.pyfunc.load_model("models:/xray-cluster-mass@champion").predict(
        {"images": X, "redshift": z})     # -> DataFrame with log_mass (and sigma)
    # a model trained with model.use_exposure also takes {"exposure_s": t} (N,) seconds
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from .inputs import EXPOSURE
from .inputs import unpack_inputs

KERAS_ARTIFACT = "keras_model"


class XrayMassModel(mlflow.pyfunc.PythonModel):
    """Loads the saved Keras network; predicts from {"images": (N,H,W,C), "redshift": (N,)}.

    inputs.INPUTS says what it takes; unpack_inputs converts and checks it.
    """

    # unpack_inputs checks inputs; MLflow's type-hint validation takes list[...] inputs only, and
    # without hints it warns on every load.
    _skip_type_hint_validation = True

    def load_context(self, context):  # noqa: ANN001, ANN201 (MLflow inspects the signature)
        from .layers import load_network  # Keras and its backend: loaded here, not on import

        self.model = load_network(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        shape = tuple(int(d) for d in self.model.input["images"].shape[1:])
        with_exposure = EXPOSURE in self.model.input  # models of before model.use_exposure: False
        images, redshift, *exposure = unpack_inputs(model_input, shape, exposure=with_exposure)
        feed = {"images": images, "redshift": redshift}
        if with_exposure:
            feed[EXPOSURE] = exposure[0]
        out = np.asarray(self.model.predict(feed, batch_size=256, verbose=0))
        frame = pd.DataFrame({"log_mass": out[:, 0].astype(np.float64)})
        if out.shape[1] > 1:
            frame["sigma"] = out[:, 1].astype(np.float64)
        return frame
