"""The achievable floor: the replay reproduces the file, the fit recovers truth from noise-free
images, and on a mock the floor lies between the oracle floor and the feature baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpo.data import achievable
from hpo.data.achievable import achievable_floor
from hpo.data.achievable import likelihood_peak
from hpo.data.achievable import posterior_log_mass
from hpo.data.achievable import replay
from hpo.data.baseline import floors
from hpo.data.contract import load_dataset
from hpo.data.sim import simulator as sim
from hpo.data.sim.config import apply_sim_overrides
from hpo.data.sim.config import load_sim_config
from hpo.errors import DataContractError


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory):
    """300 clusters at eRASS:8 depth (a second chunk from cluster 250 on: CHUNK_CLUSTERS is
    lowered so that the replay crosses chunks)."""
    folder = tmp_path_factory.mktemp("mock")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim, "CHUNK_CLUSTERS", 250)
        path = sim.write_mock(folder / "mock.h5", 300, 11, load_sim_config(None, "eRASS:8"))
    return load_dataset(path)


def test_replay_reproduces_the_files_draws(mock) -> None:
    # The draws come back from the seed alone, in the order asked for, across chunks: truth's
    # float32 values exactly, each cluster's AGN; and their expected counts (checked inside).
    idx = np.array([299, 3, 250, 120, 249])
    rep = replay(mock, idx)
    for key in ("log_lx", "kT", "rc_arcsec", "bkg_rate", "nh_cm2", "exposure_s"):
        assert np.array_equal(rep.params[key].astype(np.float32), mock.truth[key][idx]), key
    n_agn = np.bincount(rep.sources.cluster, minlength=idx.size)
    assert np.array_equal(n_agn, mock.truth["n_agn"][idx].astype(int))
    assert rep.expected_images().shape == (5, 50, 50, 10)


def test_replay_refuses_a_file_it_did_not_write(mock) -> None:
    other = dataclasses.replace(mock, attrs={**mock.attrs, "generator": "hpo.simulator/1"})
    with pytest.raises(DataContractError, match="simulate it again"):
        replay(other, np.arange(3))
    reseeded = dataclasses.replace(mock, attrs={**mock.attrs, "seed": 12})
    with pytest.raises(DataContractError, match="do not reproduce the file's"):
        replay(reseeded, np.arange(3))


def test_likelihood_table_is_the_exact_poisson_sum(mock) -> None:
    # The tabulated log-likelihood equals sum(n ln mu - mu) over every pixel and channel, up to
    # a constant, on the first pass's nodes.
    idx = np.argsort(mock.truth["cluster_counts"])[[10, 150, 295]]
    rep = replay(mock, idx)
    counts = mock.images[idx]
    cfg = rep.cfg
    priors = achievable._priors(rep.params, cfg)
    for j, (cluster, _, box) in enumerate(achievable._clusters(rep, counts, priors)):
        ell, t = box.nodes()
        ln_f = cluster.response(t)
        table = cluster.loglik(ell, ln_f)
        n = counts[j].reshape(2500, 10).astype(np.float64)
        cmap = rep.parts["cluster_map"][j].reshape(2500, 1)
        bkg = (rep.parts["agn_map"][j].reshape(2500, 1) * rep.parts["agn_spec"][j]
               + rep.parts["bkg_pixel"][j])
        diffs = []
        for a, b in [(0, 0), (10, 30), (24, 24), (40, 5), (47, 47)]:
            u = (ell[a, b] - achievable.LOG_L_REF) * achievable.LN10 + ln_f[b]
            mu = cmap * np.exp(u) + bkg
            diffs.append(table[a, b] - float((n * np.log(mu) - mu).sum()))
        assert np.ptp(diffs) < 1e-3


def test_fit_recovers_truth_on_noise_free_images(mock) -> None:
    # Fitted to its own expected counts, every nuisance known, the maximum-likelihood log L and
    # log kT are the truth, from a few dozen cluster counts to thousands.
    order = np.argsort(mock.truth["cluster_counts"])
    idx = order[[200, 260, 299]]
    assert mock.truth["cluster_counts"][idx[0]] > 30
    images = replay(mock, idx).expected_images()
    fit = likelihood_peak(mock, idx, images=images)
    np.testing.assert_allclose(fit["log_lx"], mock.truth["log_lx"][idx], atol=1e-3)
    np.testing.assert_allclose(fit["log_kt"], np.log10(mock.truth["kT"][idx]), atol=1e-3)


def test_noise_free_posterior_at_great_depth_is_the_oracles(tmp_path) -> None:
    # Massive, nearby clusters seen for 2 x 10^5 s without noise: the likelihood pins log L and
    # log kT, and the posterior mean of log M is E[log M | the true log L, log kT], the oracle's.
    cfg = apply_sim_overrides({"survey.exposure_range_s": [2e5, 2e5],
                               "population.log_mass_range": [14.3, 15.0],
                               "population.redshift_range": [0.05, 0.4]})
    ds = load_dataset(sim.write_mock(tmp_path / "deep.h5", 3, 5, cfg))
    idx = np.arange(3)
    post = posterior_log_mass(ds, idx, images=replay(ds, idx).expected_images())
    np.testing.assert_allclose(post["mean"], post["oracle"], atol=3e-3)
    np.testing.assert_allclose(post["log_lx"], ds.truth["log_lx"], atol=3e-3)


def test_achievable_floor_lies_between_the_oracle_floor_and_the_feature_baseline(mock) -> None:
    # On the floors' own 60 scored clusters: the noise-free floors < the achievable floor (photon
    # noise costs) < the feature baseline (the photons hold more than aperture photometry), its
    # interval around it, its bias small.
    fl = floors(mock)
    out = achievable_floor(mock)
    assert out["n_eval"] == fl["n_eval"] == 60
    assert out["oracle_posterior"] < out["achievable_floor"]
    assert fl["oracle_floor"] < out["achievable_floor"] < fl["feature_baseline"]
    lo, hi = out["achievable_floor_68"]
    assert lo < out["achievable_floor"] < hi
    assert abs(out["achievable_bias"]) < 0.05
    assert achievable_floor(mock, max_eval=10)["n_eval"] == 10


@pytest.mark.parametrize("function", ["power_law", "cutoff_power_law"])
def test_the_mass_prior_is_the_generators_population(function) -> None:
    # The prior's density of log M at a redshift is the histogram of the generator's own draws.
    cfg = apply_sim_overrides({"population.mass_function": function,
                               "population.redshift_range": [0.8, 0.8]})
    drawn = sim.draw_clusters(np.random.default_rng(0), 200_000, cfg)["log_mass"]
    edges = np.linspace(13.0, 15.0, 11)
    found = np.histogram(drawn, edges)[0] / drawn.size
    fine = np.linspace(13.0, 15.0, 2001)
    density = np.exp(achievable._log_mass_function(fine, 0.8, cfg))
    mass = np.array([density[(fine >= a) & (fine < b)].sum() for a, b in zip(edges, edges[1:])])
    np.testing.assert_allclose(found, mass / mass.sum(), rtol=0.05, atol=2e-4)
