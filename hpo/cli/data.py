"""Commands on data files: `hpo simulate`, `hpo cutouts` and `hpo baseline`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli import OVERWRITE_HELP
from hpo.cli._table import table
from hpo.config.tree import SEED_MAX


@app.command()
def simulate(
    out: Path = typer.Argument(..., help="HDF5 file to write."),
    n: int = typer.Option(1000, "--n", min=1, help="Number of clusters."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX,
                             help="Random seed; the same seed gives the same file."),
    preset: str | None = typer.Option(None, "--preset", help="Exposure preset: eRASS1, eRASS:4, eRASS:8, eFEDS, mixed (150-2500 s, log-uniform)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of simulator settings."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Processes drawing chunks at once; the file is the same for any value."),
    events: Path | None = typer.Option(
        None, "--events", help="Also write the clusters as eROSITA survey files in this folder (eSASS event "
        "lists per tile, exposure maps, catalog.fits): a fixture for hpo cutouts."),
    keep_light_leak: bool = typer.Option(
        False, "--keep-light-leak", help="Count TM5/TM7 below 0.8 keV too, as `hpo cutouts --keep-light-leak` "
        "does (by default the images hold what hpo cutouts keeps: no TM5/TM7 counts below 0.8 keV)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write an eROSITA-like mock data set (images, redshift, exposure_s, log_mass, truth/)."""
    from hpo.data.sim.simulator import fill_mock
    from hpo.data.sim.simulator import load_sim_config
    from hpo.outputs import atomic_outputs
    from hpo.outputs import check_outputs

    fixture: list[Path] = []
    if events is not None:
        from hpo.data.survey.mock_survey import fixture_files
        from hpo.data.survey.mock_survey import MAX_CLUSTERS
        from hpo.errors import ConfigError

        if n > MAX_CLUSTERS:
            raise ConfigError(f"--events writes a test fixture of at most {MAX_CLUSTERS} clusters, got --n {n}")
        fixture = fixture_files(events, n)
    check_outputs([out, *fixture], inputs=[config], overwrite=overwrite, option="")
    cfg = load_sim_config(config, preset)
    if keep_light_leak:
        from hpo.data.sim.config import apply_sim_overrides

        cfg = apply_sim_overrides({"instrument.light_leak_cut": False}, base=cfg, where="--keep-light-leak")
    fx = None
    # The data file and its fixture appear together: the fixture is written (whole) from the
    # data file's temporary, before that is renamed.
    with atomic_outputs([out], inputs=[config], overwrite=overwrite, option="") as (tmp,):
        fill_mock(tmp, n, seed, cfg, progress=not quiet, jobs=jobs)
        if events is not None:
            from hpo.data.survey.mock_survey import write_event_fixture

            fx = write_event_fixture(tmp, events, seed, cfg, overwrite=overwrite, data_name=out)
    typer.echo(f"wrote {n} clusters to {out}")
    if fx is not None:
        typer.echo(f"wrote {len(fx.event_files)} event files, {len(fx.exposure_maps)} exposure maps and "
                   f"{fx.catalog.name} to {fx.directory} ({fx.n_photons} photons, {fx.n_fodder} events the "
                   f"cuts remove; {len(fx.edge_ids)} clusters stick out of the survey)")


@app.command()
def cutouts(
    events: list[Path] = typer.Argument(..., help="eSASS event files (EVENTS + GTI extensions), e.g. em01_*_020_EventList_c010.fits."),
    catalog: Path = typer.Option(..., "--catalog", help="Cluster catalogue: a FITS table with RA, DEC, a redshift and an ID column."),
    out: Path = typer.Option(..., "-o", "--out", help="HDF5 file to write (the data contract); skipped clusters go to OUT.skipped.csv."),
    exposure: list[Path] = typer.Option(
        [], "--exposure", help="Exposure map (FITS image with WCS, s), once per map or one quoted glob; exposure_s "
        "is its mean over each cut-out."),
    ra_column: str = typer.Option("RA", "--ra-column", help="Catalogue column of right ascension (deg)."),
    dec_column: str = typer.Option("DEC", "--dec-column", help="Catalogue column of declination (deg)."),
    z_column: str = typer.Option("Z", "--z-column", help="Catalogue column of redshift (eRASS1: BEST_Z)."),
    id_column: str = typer.Option("ID", "--id-column", help="Catalogue column of IDs kept as cluster_id (eRASS1: NAME)."),
    mass_column: str | None = typer.Option(
        None, "--mass-column", help="Catalogue column of M500 kept as reference/log_mass, for comparison only."),
    mass_unit: str | None = typer.Option(
        None, "--mass-unit", help="Unit of --mass-column when its TUNIT does not say: Msun, 1e13Msun, 1e14Msun, log10Msun."),
    exposure_column: str | None = typer.Option(
        None, "--exposure-column", help="Catalogue column of exposure (s), used when no --exposure map is given."),
    keep_light_leak: bool = typer.Option(
        False, "--keep-light-leak", help="Keep TM5/TM7 events below 0.8 keV (dropped by default: light leak)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Cut eROSITA event files (eSASS format) out around each catalogue cluster, into the data contract."""
    from hpo.data.survey.catalog import CatalogColumns
    from hpo.data.survey.cutouts import expand_paths
    from hpo.data.survey.cutouts import make_cutouts
    from hpo.data.survey.esass import EventCuts

    columns = CatalogColumns(ra=ra_column, dec=dec_column, redshift=z_column, id=id_column, mass=mass_column,
                             mass_unit=mass_unit, exposure=exposure_column)
    cuts = EventCuts(light_leak_tms=() if keep_light_leak else (5, 7))
    r = make_cutouts(expand_paths(events, "event file"), catalog, out,
                     exposure_paths=expand_paths(exposure, "exposure map"), columns=columns, cuts=cuts,
                     overwrite=overwrite)
    removed = ", ".join(f"{v} {k}" for k, v in r.removed.items())
    typer.echo(f"wrote {r.n_written} clusters to {r.path} (exposure_s: {r.exposure_source}; events removed: {removed})")
    for note in r.notes:
        typer.echo(f"catalogue: {note}")
    if r.skipped:
        by_reason: dict[str, list[str]] = {}
        for cid, reason in r.skipped:
            by_reason.setdefault(reason, []).append(str(cid))
        for reason, ids in by_reason.items():
            shown = ", ".join(ids[:10]) + (f", ... ({len(ids) - 10} more)" if len(ids) > 10 else "")
            typer.echo(f"skipped {len(ids)} ({reason}): {shown}")
        typer.echo(f"skipped clusters with their reasons: {r.skipped_csv}")


@app.command()
def baseline(
    data: Path = typer.Argument(..., help="Data file (HDF5 or .npz)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    achievable: bool = typer.Option(
        False, "--achievable", help="Also the achievable floor, for a file hpo simulate wrote: the "
        "posterior mean of log M by the estimator that knows the generator and every nuisance "
        "(hpo.data.achievable), with its 68% interval; slow, about 0.05 s per scored cluster."),
) -> None:
    """The floors of a data file: the oracle floor (from truth/), the classic counts estimator (on
    count rates too, for a file with exposure_s) and the feature baseline (gradient-boosted trees on
    aperture photometry), all fitted on the same 80% of the clusters and scored on the other 20%."""
    from hpo.data.baseline import floors
    from hpo.data.contract import load_dataset

    ds = load_dataset(data)
    result = floors(ds, with_exposure=True)
    if achievable:
        from hpo.data.achievable import achievable_floor

        result.update(achievable_floor(ds))
    if as_json:
        typer.echo(json.dumps(result))
        return
    rows = [{"estimator": k, "residual_std_dex": result[k], "bias_dex": None}
            for k in ("oracle_floor", "counts_baseline", "counts_rate_baseline") if k in result]
    if achievable:
        rows.insert(1, {"estimator": "achievable_floor", "residual_std_dex": result["achievable_floor"],
                        "bias_dex": result["achievable_bias"]})
    rows.append({"estimator": "feature_baseline", "residual_std_dex": result["feature_baseline"],
                 "bias_dex": result.get("feature_baseline_bias")})
    typer.echo(table(rows))
    trees = (f"the trees on {result['feature_baseline_n_fit']}" if result["feature_baseline"]
             is not None else f"no trees: the feature baseline {result['feature_baseline_skipped']}")
    typer.echo(f"fitted on {result['n_fit']} clusters ({trees}), scored on {result['n_eval']}")
    if achievable:
        lo, hi = result["achievable_floor_68"]
        typer.echo(f"achievable floor: 68% interval {lo:.4f}-{hi:.4f} dex over resamples of the scored clusters")
