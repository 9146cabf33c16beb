"""The mock generator: physics trends, flux bookkeeping, determinism, contract, config errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM
from scipy.integrate import quad

from hpo.data.contract import load_dataset
from hpo.data.cosmology import FlatLCDM
from hpo.data.sim import simulator as sim
from hpo.data.sim.config import apply_sim_overrides
from hpo.data.sim.config import load_sim_config
from hpo.data.sim.config import PRESETS
from hpo.data.sim.config import SimConfig
from hpo.data.sim.imaging import expected_counts
from hpo.data.sim.response import channel_counts
from hpo.data.sim.response import effective_area
from hpo.data.sim.response import KEV_ERG
from hpo.errors import ConfigError

NO_SCATTER = {
    "scaling.sigma_ln_kt": 0.0,
    "scaling.sigma_ln_lx": 0.0,
    "profile.sigma_ln_xc": 0.0,
    "profile.beta_range": [0.7, 0.7],
    "profile.axis_ratio_range": [1.0, 1.0],
    "profile.offset_sigma_r500": 0.0,
    "profile.cool_core_probability": 0.0,
    "spectrum.nh_range_cm2": [3e20, 3e20],
    "survey.exposure_range_s": [2000.0, 2000.0],
}
IDEAL = {
    **NO_SCATTER,
    "instrument.psf_enabled": False,
    "background.enabled": False,
    "point_sources.enabled": False,
}


def _expected(cfg: SimConfig, log_mass: list[float], z: list[float]) -> tuple[dict, dict]:
    params = sim.draw_clusters(
        np.random.default_rng(0),
        len(log_mass),
        cfg,
        log_mass=np.array(log_mass),
        redshift=np.array(z),
    )
    return params, expected_counts(params, cfg)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# physics


def test_cosmology_matches_astropy() -> None:
    # Our tabulated distances and densities agree with astropy's flat LCDM.
    z = np.array([0.05, 0.3, 1.0, 2.5])
    ours, ref = FlatLCDM(70, 0.3), FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)
    np.testing.assert_allclose(
        ours.angular_diameter_distance_mpc(z), ref.angular_diameter_distance(z).value, rtol=1e-6
    )
    np.testing.assert_allclose(
        ours.luminosity_distance_mpc(z), ref.luminosity_distance(z).value, rtol=1e-6
    )
    np.testing.assert_allclose(
        ours.critical_density_msun_mpc3(z),
        ref.critical_density(z).to(u.Msun / u.Mpc**3).value,
        rtol=1e-5,
    )


def test_counts_rise_with_mass_at_fixed_z() -> None:
    # More mass -> more luminosity -> more cluster counts in the cut-out (PSF on).
    cfg = apply_sim_overrides(NO_SCATTER)
    _, exp = _expected(cfg, [13.0, 13.5, 14.0, 14.5, 15.0], [0.3] * 5)
    counts = exp["cluster"].sum(axis=(1, 2, 3))
    assert np.all(np.diff(counts) > 0), counts


def test_counts_fall_with_z_at_fixed_mass() -> None:
    # Farther clusters give fewer counts, despite the E(z)^2 evolution of L.
    cfg = apply_sim_overrides(NO_SCATTER)
    _, exp = _expected(cfg, [14.0] * 5, [0.1, 0.2, 0.4, 0.7, 1.0])
    counts = exp["cluster"].sum(axis=(1, 2, 3))
    assert np.all(np.diff(counts) < 0), counts


def test_sanity_targets_at_erass8() -> None:
    # log M 14.5 at z=0.1 gives thousands of counts, 13.0 at z=0.8 about one; background a few
    # 1e-3 counts/s/arcmin^2.
    cfg = apply_sim_overrides(NO_SCATTER)
    params, exp = _expected(cfg, [14.5, 13.0], [0.1, 0.8])
    counts = exp["cluster"].sum(axis=(1, 2, 3))
    assert 1e3 < counts[0] < 3e4 and 0.2 < counts[1] < 30, counts
    area_arcmin2 = (cfg.instrument.image_size * cfg.instrument.pixel_arcsec / 60.0) ** 2
    rate = exp["background"].sum(axis=(1, 2, 3)) / (params["exposure_s"] * area_arcmin2)
    assert np.all((1e-3 < rate) & (rate < 1e-2)), rate


def test_spectrum_hardens_with_temperature() -> None:
    # Hotter gas puts a larger share of its (background-free) counts above 2 keV.
    cfg = SimConfig()
    kt = np.array([1.0, 2.0, 4.0, 8.0])
    ones = np.ones_like(kt)
    counts = channel_counts(44 * ones, kt, 0.3 * ones, 3e20 * ones, 2000 * ones, cfg)
    edges = np.array(cfg.spectrum.channel_edges_kev)
    hard = counts[:, edges[:-1] >= 2.0].sum(axis=1)
    soft = counts[:, edges[1:] <= 1.0].sum(axis=1)
    assert np.all(np.diff(hard / soft) > 0), hard / soft


def test_the_light_leak_cut_takes_two_of_seven_modules_below_0_8_keV() -> None:
    # Rule: by default the counts are what hpo cutouts keeps: TM5 and TM7 give nothing below
    # 0.8 keV, so the channels below it hold exactly 5/7 of the seven modules' counts (cluster,
    # AGN and background alike), the 0.7-1.0 keV channel between 5/7 and all of them (the step
    # falls inside it), the channels above it all; `light_leak_cut: false` is the twin of
    # `hpo cutouts --keep-light-leak`.
    from hpo.data.sim.response import agn_counts_per_flux
    from hpo.data.sim.response import background_spectrum

    cut, keep = SimConfig(), apply_sim_overrides({"instrument.light_leak_cut": False})
    kt, ones = np.array([1.0, 3.0, 8.0]), np.ones(3)
    ratio = [channel_counts(44 * ones, kt, 0.3 * ones, 3e20 * ones, 2000 * ones, c) for c in (cut, keep)]
    ratio = ratio[0] / ratio[1]
    agn = agn_counts_per_flux(3e20 * ones, 2000 * ones, cut) / agn_counts_per_flux(3e20 * ones, 2000 * ones, keep)
    bkg = background_spectrum(cut) / background_spectrum(keep)
    for r in (*ratio, *agn, bkg):
        np.testing.assert_allclose(r[:2], 5 / 7, rtol=1e-6)  # quadratures differ in channel 3
        assert 5 / 7 + 0.05 < r[2] < 0.95, r[2]  # 0.7-0.8 keV of 0.7-1.0 keV is cut
        np.testing.assert_allclose(r[3:], 1.0, rtol=1e-6)
    assert np.isclose(background_spectrum(keep).sum(), 1.0) and background_spectrum(cut).sum() < 0.95
    assert effective_area(np.array([0.79, 0.81]), cut)[0] == pytest.approx(
        5 / 7 * effective_area(np.array([0.79]), keep)[0])


@pytest.mark.parametrize("modules, why", [([5, 8], "distinct modules of 1-7"), ([5, 5], "distinct"),
                                          ([1, 2, 3, 4, 5, 6, 7], "every module")])
def test_light_leak_modules_must_be_some_of_the_seven(modules, why) -> None:
    with pytest.raises(ConfigError, match=rf"instrument\.light_leak_modules.*{why}"):
        apply_sim_overrides({"instrument.light_leak_modules": modules})


def test_angular_size_shrinks_with_z() -> None:
    # R500 in arcsec and the image's count-weighted radius both shrink with z at fixed mass.
    cfg = apply_sim_overrides(IDEAL)
    params, exp = _expected(cfg, [14.0] * 4, [0.1, 0.3, 0.6, 1.0])
    assert np.all(np.diff(params["r500_arcsec"]) < 0)
    img = exp["cluster"].sum(axis=3)
    yy, xx = np.mgrid[: img.shape[1], : img.shape[2]] - (img.shape[1] - 1) / 2
    rms = np.sqrt((img * (xx**2 + yy**2)).sum(axis=(1, 2)) / img.sum(axis=(1, 2)))
    assert np.all(np.diff(rms) < 0), rms


def _folded_counts(
    log_lx: float, kt: float, z: float, nh: float, exposure: float, cfg: SimConfig
) -> np.ndarray:
    """Counts per channel by adaptive quadrature, with astropy's D_L: an independent check."""
    g = cfg.spectrum.gaunt_index
    shape = lambda e: (e / kt) ** (-g) * np.exp(-e / kt)  # noqa: E731
    norm = 10**log_lx / quad(shape, *cfg.scaling.lx_band_kev)[0]  # erg/s/keV
    d_l = FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0).luminosity_distance(z).to(u.cm).value

    def rate(e: float) -> float:
        flux = (1 + z) * norm * shape(e * (1 + z)) / (4 * np.pi * d_l**2)
        absorbed = np.exp(-nh * 2.4e-22 * e ** (-8 / 3))
        return flux / (e * KEV_ERG) * float(effective_area(np.array(e), cfg)) * absorbed

    edges = cfg.spectrum.channel_edges_kev
    kinks = cfg.instrument.area_energy_kev
    return np.array(
        [
            exposure * quad(rate, a, b, points=[k for k in kinks if a < k < b], limit=200)[0]
            for a, b in zip(edges, edges[1:])
        ]
    )


def test_ideal_cutout_holds_the_folded_luminosity() -> None:
    # With PSF, background and AGN off, a cluster that fits in the cut-out puts exactly its
    # luminosity, folded through the response, into the image (to a few percent).
    cfg = apply_sim_overrides(IDEAL)
    params, exp = _expected(cfg, [13.0, 13.3], [0.8, 1.0])
    assert np.all(cfg.profile.truncation_r500 * params["r500_arcsec"] < 190)  # fits in 200"
    for i in range(2):
        ref = _folded_counts(
            params["log_lx"][i], params["kT"][i], params["redshift"][i], 3e20, 2000.0, cfg
        )
        got = exp["cluster"][i].sum(axis=(0, 1))
        np.testing.assert_allclose(got, ref, rtol=0.03)
        assert abs(got.sum() / ref.sum() - 1) < 0.01


def test_psf_keeps_the_flux_of_a_small_cluster() -> None:
    # The PSF only redistributes counts: a compact cluster keeps its total in the cut-out.
    on = apply_sim_overrides({**IDEAL, "instrument.psf_enabled": True})
    _, with_psf = _expected(on, [13.0], [0.8])
    _, without = _expected(apply_sim_overrides(IDEAL), [13.0], [0.8])
    assert with_psf["cluster"].sum() == pytest.approx(without["cluster"].sum(), rel=0.01)
    assert with_psf["cluster"].max() < without["cluster"].max()  # but blurs the peak


def test_mass_function_options_stay_in_range() -> None:
    # The power-law and cutoff mass functions draw inside the range and favour low masses.
    for name in ("power_law", "cutoff_power_law"):
        cfg = apply_sim_overrides({"population.mass_function": name})
        lm = sim.draw_clusters(np.random.default_rng(1), 2000, cfg)["log_mass"]
        assert lm.min() >= 13.0 and lm.max() <= 15.0 and np.median(lm) < 13.6


# ---------------------------------------------------------------------------------------------
# chunks and files


def test_simulate_chunk_shapes_and_truth() -> None:
    # Images are integer counts (n, 50, 50, 10); every hidden draw is under truth/.
    out = sim.simulate_chunk(np.random.default_rng(3), 20, SimConfig())
    assert out["images"].shape == (20, 50, 50, 10)
    assert np.issubdtype(out["images"].dtype, np.integer)
    needed = {
        "log_lx",
        "kT",
        "r500_arcsec",
        "rc_arcsec",
        "beta",
        "exposure_s",
        "total_counts",
        "log_e_z",
        "axis_ratio",
        "angle_deg",
        "offset_x_arcsec",
        "offset_y_arcsec",
        "bkg_counts",
        "agn_counts",
        "n_agn",
    }
    assert needed <= {k[len("truth/") :] for k in out if k.startswith("truth/")}
    np.testing.assert_array_equal(out["truth/total_counts"], out["images"].sum(axis=(1, 2, 3)))


def test_same_seed_same_file_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same (n, seed, config) -> the same file byte for byte, across several chunks, drawn by one
    # process or several;
    # another seed -> other images.
    monkeypatch.setattr(sim, "CHUNK_CLUSTERS", 40)
    cfg = SimConfig()
    a = sim.write_mock(tmp_path / "a.h5", 90, 7, cfg)
    b = sim.write_mock(tmp_path / "b.h5", 90, 7, cfg)
    c = sim.write_mock(tmp_path / "c.h5", 90, 8, cfg)
    parallel = sim.write_mock(tmp_path / "p.h5", 90, 7, cfg, jobs=2)  # --jobs changes nothing
    assert _file_digest(a) == _file_digest(b) == _file_digest(parallel)
    with h5py.File(a) as fa, h5py.File(c) as fc:
        assert not np.array_equal(fa["images"][()], fc["images"][()])


def test_written_file_passes_the_contract(tmp_path: Path) -> None:
    # The file loads through the data contract, with attrs and truth.
    path = sim.write_mock(tmp_path / "mock.h5", 30, 0, load_sim_config(None, "eFEDS"))
    ds = load_dataset(path)
    assert ds.images.shape == (30, 50, 50, 10) and ds.log_mass is not None
    assert ds.attrs["generator"] == sim.GENERATOR and ds.attrs["seed"] == 0
    assert ds.attrs["preset"] == "eFEDS" and ds.attrs["pixel_arcsec"] == 8.0
    assert len(ds.attrs["channel_edges_keV"]) == 11
    assert 1200 <= ds.truth["exposure_s"].min() and ds.truth["exposure_s"].max() <= 2200
    # the exposure is data too (a real survey knows it from its exposure maps)
    np.testing.assert_array_equal(ds.exposure_s, ds.truth["exposure_s"])
    assert not (tmp_path / "mock.h5.partial").exists()


def test_mixed_preset_spans_every_depth_log_uniformly() -> None:
    # The mixed preset draws 150-2500 s log-uniformly (as many clusters per factor of depth),
    # and only the exposure differs from another preset's clusters of the same seed.
    mixed = sim.draw_clusters(np.random.default_rng(5), 4000, load_sim_config(None, "mixed"))
    deep = sim.draw_clusters(np.random.default_rng(5), 4000, load_sim_config(None, "eRASS:8"))
    t = mixed["exposure_s"]
    assert 150 <= t.min() and t.max() <= 2500
    assert abs(np.median(t) / np.sqrt(150 * 2500) - 1) < 0.05  # log-uniform: geometric mid-point
    np.testing.assert_array_equal(mixed["log_mass"], deep["log_mass"])
    np.testing.assert_array_equal(mixed["log_lx"], deep["log_lx"])
    uniform = apply_sim_overrides({"survey.preset": "mixed", "survey.exposure_distribution": "uniform"})
    t = sim.draw_clusters(np.random.default_rng(5), 4000, uniform)["exposure_s"]
    assert abs(np.median(t) / 1325 - 1) < 0.05


# ---------------------------------------------------------------------------------------------
# configuration


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    # A misspelt key in the YAML file is refused, naming the file and the key.
    path = tmp_path / "sim.yaml"
    path.write_text("profile:\n  betta_range: [0.6, 0.7]\n")
    with pytest.raises(ConfigError, match=r"sim\.yaml.*profile\.betta_range"):
        load_sim_config(path, None)


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    # A value the schema refuses (beta <= 0.5 has infinite luminosity) names its key.
    path = tmp_path / "sim.yaml"
    path.write_text("profile.beta_range: [0.4, 0.7]\n")
    with pytest.raises(ConfigError, match=r"profile\.beta_range"):
        load_sim_config(path, None)


def test_a_redshift_range_beyond_the_contract_is_refused(tmp_path: Path) -> None:
    # The range must lie in the data contract's 0 < z <= 20 (z = 1e30 asked the distance table
    # for 5e33 points): refused naming the key, before anything is simulated.
    path = tmp_path / "sim.yaml"
    path.write_text("population.redshift_range: [0.1, 1.0e30]\n")
    with pytest.raises(ConfigError, match=r"redshift_range.*<= 20"):
        load_sim_config(path, None)


def test_unknown_preset_lists_valid_ones() -> None:
    # An unknown preset is refused with the list of valid ones.
    with pytest.raises(ConfigError, match=r"eRASS:9.*eRASS1, eRASS:4, eRASS:8, eFEDS"):
        load_sim_config(None, "eRASS:9")


def test_preset_sets_exposure_and_overrides_file(tmp_path: Path) -> None:
    # The preset picks the exposure range; --preset beats the file's survey.preset.
    path = tmp_path / "sim.yaml"
    path.write_text("survey: {preset: eFEDS}\n")
    assert load_sim_config(path, None).survey.exposure_range() == PRESETS["eFEDS"]
    assert load_sim_config(path, "eRASS1").survey.exposure_range() == PRESETS["eRASS1"]
    assert load_sim_config(None, None).survey.preset == "eRASS:8"
