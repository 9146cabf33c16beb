"""Models-from-code entry of a logged model: MLflow runs this file to build the pyfunc model.

It takes the wrapper from the model's own copy of hpo/inference (code/xray_hpo_inference, first
on sys.path when MLflow loads the model). MLflow also runs it while hpo logs the model, where no
copy is on the path yet: then it takes hpo's own.
"""

from mlflow.models import set_model

try:
    from xray_hpo_inference.pyfunc import XrayMassModel
except ModuleNotFoundError as exc:
    if exc.name != "xray_hpo_inference":
        raise
    from hpo.inference.pyfunc import XrayMassModel

set_model(XrayMassModel())
