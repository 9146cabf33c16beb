"""Draws the figures of docs/simulator.md into docs/figures/ and prints the floors of each preset.

    .venv/bin/python docs/make_simulator_figures.py [--n 3000] [--seed 0]

Writes sim_channels.png (the 10 channels of a low- and a high-mass cluster at low and high z),
sim_profiles.png (radial profiles), sim_counts_vs_mass.png, sim_hardness_vs_mass.png,
sim_floors.png and sim_floors.md (the floors per preset, with and without the light-leak cut).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpo.data.baseline import floors  # noqa: E402
from hpo.data.contract import Dataset  # noqa: E402
from hpo.data.contract import load_dataset  # noqa: E402
from hpo.data.sim.config import apply_sim_overrides  # noqa: E402
from hpo.data.sim.config import load_sim_config  # noqa: E402
from hpo.data.sim.config import PRESETS  # noqa: E402
from hpo.data.sim.config import SimConfig  # noqa: E402
from hpo.data.sim.imaging import expected_counts  # noqa: E402
from hpo.data.sim.response import channel_counts  # noqa: E402
from hpo.data.sim.simulator import draw_clusters  # noqa: E402
from hpo.data.sim.simulator import draw_point_sources  # noqa: E402
from hpo.data.sim.simulator import write_mock  # noqa: E402

OUT = Path(__file__).parent / "figures"
DPI = 80
SHOWCASE = [(13.5, 0.1), (13.5, 0.8), (14.7, 0.1), (14.7, 0.8)]  # (log M, z)


def showcase(cfg: SimConfig, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Draws, expected counts and one Poisson image of the four SHOWCASE clusters."""
    rng = np.random.default_rng(seed)
    lm, z = (np.array(v) for v in zip(*SHOWCASE))
    params = draw_clusters(rng, len(lm), cfg, log_mass=lm, redshift=z)
    expected = expected_counts(params, cfg, draw_point_sources(rng, len(lm), cfg))
    return params, expected, rng.poisson(expected["total"])


def plot_channels(cfg: SimConfig, params: dict, images: np.ndarray) -> None:
    edges = cfg.spectrum.channel_edges_kev
    fig, axes = plt.subplots(4, 10, figsize=(13, 5.6))
    for row, (lm, z) in enumerate(SHOWCASE):
        vmax = max(1, np.percentile(images[row], 99.9))
        for ch in range(10):
            ax = axes[row, ch]
            ax.imshow(
                np.sqrt(images[row, :, :, ch]),
                origin="lower",
                cmap="magma",
                vmin=0,
                vmax=np.sqrt(vmax),
            )
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{edges[ch]:g}-{edges[ch + 1]:g} keV", fontsize=8)
        axes[row, 0].set_ylabel(f"log M {lm}\nz {z}\n{int(images[row].sum())} cts", fontsize=8)
    fig.suptitle('Photon counts per channel (sqrt stretch, 50 x 50 pixels of 8")', fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "sim_channels.png", dpi=DPI)
    plt.close(fig)


def plot_profiles(cfg: SimConfig, expected: dict, images: np.ndarray) -> None:
    size, pix = cfg.instrument.image_size, cfg.instrument.pixel_arcsec
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    ring = np.minimum((np.hypot(xx, yy)).astype(int), size // 2)
    area = np.bincount(ring.ravel())
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (lm, z) in enumerate(SHOWCASE):
        r = (np.arange(area.size) + 0.5) * pix
        model = np.bincount(ring.ravel(), expected["total"][i].sum(axis=2).ravel()) / area
        seen = np.bincount(ring.ravel(), images[i].sum(axis=2).ravel()) / area
        (line,) = ax.plot(r, model, label=f"log M {lm}, z {z}")
        ax.plot(r, seen, ".", color=line.get_color(), ms=4)
    bkg = expected["background"][0].sum(axis=2).mean()
    ax.axhline(bkg, color="grey", ls=":", label="background (first cluster)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="radius, arcsec",
        ylabel="counts / pixel",
        title="Radial profiles: expected (lines) and one draw (dots)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "sim_profiles.png", dpi=DPI)
    plt.close(fig)


def plot_population(ds: Dataset, cfg: SimConfig) -> None:
    z, lm, t = ds.redshift, ds.log_mass, ds.truth
    edges = np.asarray(ds.attrs["channel_edges_keV"])
    hard_ch, soft_ch = edges[:-1] >= 2.0, edges[1:] <= 1.0

    fig, ax = plt.subplots(figsize=(6, 4))
    sc = ax.scatter(lm, np.log10(ds.images.sum(axis=(1, 2, 3))), c=z, s=3, cmap="viridis")
    ax.scatter(
        lm,
        np.log10(t["cluster_counts"] + 0.1),
        s=1,
        c="lightgrey",
        zorder=0,
        label="expected cluster counts (truth/cluster_counts)",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.colorbar(sc, ax=ax, label="z")
    ax.set(
        xlabel="log10 M500 / Msun",
        ylabel="log10 counts in the cut-out",
        title=f"Counts vs mass: {len(lm)} clusters, {ds.attrs['preset']}",
    )
    fig.tight_layout()
    fig.savefig(OUT / "sim_counts_vs_mass.png", dpi=DPI)
    plt.close(fig)

    images = ds.images
    raw = np.log10(
        (images[..., hard_ch].sum(axis=(1, 2, 3)) + 1)
        / (images[..., soft_ch].sum(axis=(1, 2, 3)) + 1)
    )
    spec = channel_counts(t["log_lx"], t["kT"], z, t["nh_cm2"], t["exposure_s"], cfg)
    net = np.log10(spec[:, hard_ch].sum(axis=1) / spec[:, soft_ch].sum(axis=1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, y, title in [
        (axes[0], raw, "cut-out, one draw (with background)"),
        (axes[1], net, "cluster alone, noise-free"),
    ]:
        sc = ax.scatter(lm, y, c=z, s=3, cmap="viridis")
        ax.set_xlabel("log10 M500 / Msun")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("log10 counts(> 2 keV) / counts(< 1 keV)")
    fig.colorbar(sc, ax=axes, label="z")
    fig.suptitle(
        "Hardness vs mass: the cluster hardens with kT; the hard background dilutes it", fontsize=9
    )
    fig.savefig(OUT / "sim_hardness_vs_mass.png", dpi=DPI)
    plt.close(fig)


def preset_floors(n: int, seed: int, folder: Path) -> list[tuple[str, dict, dict, float]]:
    """Per preset: the floors of a mock as `hpo simulate` writes it (light-leak cut) and of its
    `--keep-light-leak` twin (every module at every energy: generator hpo.simulator/1), and the
    std of log M."""
    rows = []
    for preset in PRESETS:
        found = []
        for keep in (False, True):
            cfg = load_sim_config(None, preset)
            if keep:
                cfg = apply_sim_overrides({"instrument.light_leak_cut": False}, base=cfg)
            name = preset.replace(":", "") + ("-keep" if keep else "")
            ds = load_dataset(write_mock(folder / f"{name}.h5", n, seed, cfg))
            found.append(floors(ds, with_exposure=True))
        rows.append((preset, *found, float(np.std(ds.log_mass))))
    return rows


COLUMNS = ["preset", "exposure, s", "oracle floor", "counts baseline", "counts-rate baseline",
           "feature baseline", "feature, --keep-light-leak", "counts, --keep-light-leak", "std log M"]


def _cells(preset: str, cut: dict, keep: dict, std: float) -> list[str]:
    lo, hi = PRESETS[preset]
    values = [cut["oracle_floor"], cut["counts_baseline"], cut["counts_rate_baseline"],
              cut["feature_baseline"], keep["feature_baseline"], keep["counts_baseline"], std]
    return [preset, f"{lo:g}-{hi:g}", *(f"{v:.3f}" for v in values)]


def write_floors(rows: list[tuple[str, dict, dict, float]], n: int, seed: int) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " ---: |" * (len(COLUMNS) - 2)]
    lines += ["| " + " | ".join(_cells(*row)) + " |" for row in rows]
    table = "\n".join(lines) + (
        f"\n\n{n} clusters per preset, seed {seed}, default config; each estimator fitted on 80% "
        f"and scored on the other 20% ({n - int(0.8 * n)} clusters). `--keep-light-leak`: the same "
        "clusters with TM5/TM7 below 0.8 keV counted (generator hpo.simulator/1).\n")
    (OUT / "sim_floors.md").write_text(table)
    fig, ax = plt.subplots(figsize=(9.5, 1.8))
    ax.axis("off")
    labels = [c.replace(", --keep-light-leak", "\n(keep leak)").replace(" baseline", "\nbaseline")
              for c in COLUMNS]
    tab = ax.table([_cells(*row) for row in rows], colLabels=labels, loc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1, 1.6)
    ax.set_title(f"Floors (dex), {n} clusters per preset", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "sim_floors.png", dpi=DPI)
    plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> None:
    """Draws every figure and prints the floors table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="Clusters per preset.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every draw.")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = SimConfig()
    params, expected, images = showcase(cfg, args.seed)
    plot_channels(cfg, params, images)
    plot_profiles(cfg, expected, images)
    with tempfile.TemporaryDirectory() as tmp:
        rows = preset_floors(args.n, args.seed, Path(tmp))
        plot_population(load_dataset(Path(tmp) / "eRASS8.h5"), cfg)
    print(write_floors(rows, args.n, args.seed))


if __name__ == "__main__":
    main()
