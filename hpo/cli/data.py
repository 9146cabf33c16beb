"""Commands on data files: `hpo simulate` and `hpo baseline`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hpo.cli import app
from hpo.cli._table import table


@app.command()
def simulate(
    out: Path = typer.Argument(..., help="HDF5 file to write."),
    n: int = typer.Option(1000, "--n", min=1, help="Number of clusters."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same file."),
    preset: str | None = typer.Option(None, "--preset", help="Exposure preset: eRASS1, eRASS:4, eRASS:8, eFEDS, mixed (150-2500 s, log-uniform)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of simulator settings."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Processes drawing chunks at once; the file is the same for any value."),
) -> None:
    """Write an eROSITA-like mock data set (images, redshift, exposure_s, log_mass, truth/)."""
    from hpo.data.simulator import load_sim_config
    from hpo.data.simulator import write_mock

    cfg = load_sim_config(config, preset)
    path = write_mock(out, n, seed, cfg, progress=not quiet, jobs=jobs)
    typer.echo(f"wrote {n} clusters to {path}")


@app.command()
def baseline(
    data: Path = typer.Argument(..., help="Data file (HDF5 or .npz)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The floors of a data file: the oracle floor (from truth/) and the classic counts estimator
    (on count rates too, for a file with exposure_s)."""
    from hpo.data.baseline import floors
    from hpo.data.contract import load_dataset

    result = floors(load_dataset(data), with_exposure=True)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(table([{"estimator": k, "residual_std_dex": v} for k, v in result.items()
                      if k in ("oracle_floor", "counts_baseline", "counts_rate_baseline")]))
