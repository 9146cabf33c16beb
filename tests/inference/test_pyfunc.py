"""A logged model carries hpo/inference and nothing else of hpo, loads where hpo is not installed,
and today's hpo still loads the models it logged before the inference module existed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import make_signal_data

pytestmark = pytest.mark.slow

# A process in which `import hpo` fails, as where plain MLflow loads a model without hpo installed.
WITHOUT_HPO = """
import json, sys
class NoHpo:
    def find_spec(self, name, path=None, target=None):
        if name == "hpo" or name.startswith("hpo."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoHpo())
import numpy as np, mlflow.pyfunc
arrays = np.load(sys.argv[2])
out = mlflow.pyfunc.load_model(sys.argv[1]).predict({k: arrays[k] for k in arrays.files})
print(json.dumps({"log_mass": out["log_mass"].tolist(), "sigma": out["sigma"].tolist(),
                  "hpo": sorted(m for m in sys.modules if m == "hpo" or m.startswith("hpo.")),
                  "code": sorted(m for m in sys.modules if m.startswith("xray_hpo_inference"))}))
"""
# How hpo wrote a model's entry file before hpo/inference existed (models/ shipped one until 0.2).
EARLIER_ENTRY = '''"""Models-from-code entry of the logged pyfunc model: MLflow runs this file to build the model."""

from mlflow.models import set_model

from hpo.tracking.pyfunc import XrayMassModel

set_model(XrayMassModel())
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(network, model folder, input arrays) of a tiny calibrated network that takes exposure_s."""
    from tests._registry import exposure_network
    from hpo.tracking.logged_model import model_metadata
    from hpo.tracking.logged_model import save_model_dir

    tmp = tmp_path_factory.mktemp("saved")
    net = exposure_network()
    arrays = {k: v for k, v in make_signal_data(6, exposure=(150.0, 2500.0)).items()
              if k in ("images", "redshift", "exposure_s")}
    folder = save_model_dir(net, tmp / "model", arrays, model_metadata(net))
    np.savez(tmp / "inputs.npz", **arrays)
    return net, folder, arrays


def _expected(net, arrays) -> np.ndarray:
    feed = {"images": arrays["images"].astype("float32"), "redshift": arrays["redshift"].reshape(-1, 1),
            "exposure_s": arrays["exposure_s"].reshape(-1, 1).astype("float32")}
    return np.asarray(net.predict(feed, verbose=0))


def test_a_model_carries_the_inference_module_and_exactly_its_requirements(saved):
    # Rule: the model's code is the inference package (no other file of hpo); its requirements are
    # what loading imports, and its MLmodel says what it takes.
    from hpo.tracking.logged_model import REQUIREMENTS

    _, folder, _ = saved
    code = sorted(str(p.relative_to(folder / "code")) for p in (folder / "code").rglob("*.py"))
    assert code == [f"xray_hpo_inference/{name}.py" for name in ("__init__", "inputs", "layers", "pyfunc")]
    assert (folder / "requirements.txt").read_text().split() == REQUIREMENTS
    meta = yaml.safe_load((folder / "MLmodel").read_text())["metadata"]
    assert meta["input_names"] == ["images", "redshift", "exposure_s"] and meta["image_shape"] == [16, 16, 2]


def test_plain_mlflow_loads_it_where_hpo_is_not_installed(saved, tmp_path):
    # Rule: a fresh process that cannot import hpo loads the model from its own code and predicts
    # what the network predicts.
    net, folder, arrays = saved
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HPO, str(folder), str(folder.parent / "inputs.npz")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hpo"] == [] and "xray_hpo_inference.pyfunc" in out["code"]
    expected = _expected(net, arrays)
    np.testing.assert_allclose(out["log_mass"], expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out["sigma"], expected[:, 1], rtol=1e-6)


def test_a_model_logged_before_the_inference_module_still_loads(saved, tmp_path):
    # Rule: a model whose entry imports hpo.tracking.pyfunc (every model hpo logged before
    # hpo/inference) loads in hpo's process and predicts as its network does.
    import mlflow.pyfunc

    from hpo.registry import models

    net, folder, arrays = saved
    entry = tmp_path / "pyfunc_entry.py"
    entry.write_text(EARLIER_ENTRY)
    mlflow.pyfunc.save_model(str(tmp_path / "earlier"), python_model=str(entry),
                             artifacts={"keras_model": str(folder / "artifacts" / "model.keras")})
    out = models.load(str(tmp_path / "earlier")).predict(arrays)
    np.testing.assert_allclose(out["log_mass"], _expected(net, arrays)[:, 0], rtol=1e-6)


def test_a_model_saved_under_another_python_loads_without_a_warning(saved, tmp_path):
    # Rule: MLflow warns that a model saved under another minor Python "may be incompatible"; hpo's
    # models are Python source and a .keras file, so hpo's load drops that one warning (and only it).
    import shutil

    import mlflow.pyfunc

    from hpo.registry import models

    _, folder, _ = saved
    other = shutil.copytree(folder, tmp_path / "py39")
    mlmodel = yaml.safe_load((other / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["python_version"] = "3.9.0"
    (other / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addHandler(handler)
    try:
        models.load(str(other))
        assert not [r for r in records if "version of Python" in r.getMessage()]
        mlflow.pyfunc.load_model(str(other))  # plain MLflow does warn: the test sees warnings
        assert [r for r in records if "version of Python" in r.getMessage()]
    finally:
        logger.removeHandler(handler)


def test_an_earlier_model_with_an_input_schema_predicts_a_file_with_exposure_quietly(tmp_path):
    # Rule: models logged before hpo dropped the input schema (the first shipped champion) name
    # images and redshift only; hpo predicts a file that also holds exposure_s through them without
    # MLflow's "Found extra inputs" warning, since it feeds a model only what it takes.
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from hpo.config import apply_overrides
    from hpo.model import InputStats
    from hpo.model import build_model
    from hpo.registry import models

    stats = InputStats(np.zeros(2), np.ones(2), 14.0, 0.5, 0.5, 0.25, 1000.0, 3.0, 0.3)
    net = build_model(apply_overrides({"model.dense": [8]}).model, image_shape=(16, 16, 2), stats=stats)
    net.save(tmp_path / "net.keras")
    entry = tmp_path / "pyfunc_entry.py"
    entry.write_text(EARLIER_ENTRY)
    arrays = make_signal_data(4, exposure=(150.0, 2500.0))
    inputs = {"images": arrays["images"].astype("float32"), "redshift": arrays["redshift"]}
    mlflow.pyfunc.save_model(str(tmp_path / "schema"), python_model=str(entry),
                             artifacts={"keras_model": str(tmp_path / "net.keras")},
                             signature=infer_signature(inputs))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mlflow").addHandler(handler)
    try:
        model = models.load(str(tmp_path / "schema"))
        mu, _ = models.predict_arrays(model, arrays["images"], arrays["redshift"], exposure=arrays["exposure_s"])
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    assert not [r for r in records if "extra inputs" in r.getMessage()], [r.getMessage() for r in records]
    np.testing.assert_allclose(mu, np.asarray(net.predict({k: inputs[k] if k == "images" else
                                                           inputs[k].reshape(-1, 1) for k in inputs},
                                                          verbose=0))[:, 0], rtol=1e-5)
