"""Models-from-code entry of the logged pyfunc model: MLflow runs this file to build the model."""

from mlflow.models import set_model

from hpo.tracking.pyfunc import XrayMassModel

set_model(XrayMassModel())
