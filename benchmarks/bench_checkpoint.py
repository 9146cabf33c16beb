"""What a checkpoint at every epoch end costs a trial (study.checkpoint every_epoch against off).

    .venv/bin/python benchmarks/bench_checkpoint.py [--train-clusters 4000] [--epochs 4] [--repeats 2]

Both rows are the same `hpo.training.train` of the default network (batch 64, augmentation and
dropout on) on the same in-memory clusters in one process, alternating so that a neighbour's
load falls on both; only the checkpoint differs: none (the baseline), or one at every epoch end
written to a local folder (hpo/training/checkpoint.py: the variables copied to the host on the
trial's thread, written, flushed and renamed on a thread of its own while the next epoch
trains). An epoch is timed from the callbacks' epoch begin to the end of the last callback's
epoch end, the checkpoint's copy included. Beside the epoch rates: the time the trial's own
thread spent on checkpoints per epoch (the copy), the writing thread's time per checkpoint, and
the file's size. Target: a checkpoint costs at most 3% of an epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_training import EpochTimer  # its epoch includes the other callbacks' work: add it last
from emit import emit

from hpo.config import apply_overrides
from hpo.data.contract import load_dataset
from hpo.data.sim.config import SimConfig
from hpo.data.sim.simulator import write_mock
from hpo.training.checkpoint import CheckpointFile
from hpo.training.checkpoint import identity
from hpo.training.loop import train

ROWS = ("off", "every_epoch")


class CpuTimer(EpochTimer):
    """CPU time of each epoch, all threads of the process (the writing thread's included): what
    the work costs, whatever the neighbours of a shared VM take of the cores."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._c0 = time.process_time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.process_time() - self._c0)


def main() -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-clusters", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="a data file (default: simulate one)")
    parser.add_argument("--no-save", action="store_true",
                        help="print the table only (not benchmarks/results/checkpoint.md)")
    args = parser.parse_args()

    n = int(round(args.train_clusters / 0.8))
    data = args.data
    if data is None:
        data = Path(tempfile.mkdtemp(prefix="bench_checkpoint_")) / "mock.h5"
        write_mock(data, n, 0, SimConfig())
    ds = load_dataset(data)
    cfg = apply_overrides({"data.path": str(data), "data.max_clusters": min(n, len(ds)),
                           "train.epochs": args.epochs, "train.early_stopping_patience": None})

    timers: dict[str, list[EpochTimer]] = {row: [] for row in ROWS}
    cpu: dict[str, list[float]] = {row: [] for row in ROWS}
    files: list[CheckpointFile] = []
    n_train = 0
    for _ in range(args.repeats):
        for row in ROWS:
            file = None
            if row != "off":
                file = CheckpointFile(Path(tempfile.mkdtemp(prefix="bench_ckpt_")) / "trial-0",
                                      identity(cfg, "bench"))
            timer, cpu_timer = EpochTimer(), CpuTimer()
            result = train(cfg, ds, callbacks=[cpu_timer, timer], checkpoint=file)
            timers[row].append(timer)
            cpu[row] += cpu_timer.seconds[1:]
            n_train = len(result.split.train)
            if file is not None:
                file.wait()
                size_mb = file.path.stat().st_size / 1e6
                files.append(file)
                file.remove()
            print(f"{row}: epochs {', '.join(f'{t:.2f}' for t in timer.seconds)} s", flush=True)

    rates = {}
    for row in ROWS:
        steady = [s for t in timers[row] for s in t.seconds[1:]]
        rates[row] = (1 / min(steady), 1 / statistics.median(steady), statistics.median(steady))
    epochs = sum(len(t.seconds) for t in timers["every_epoch"])
    copy_s = sum(f.seconds for f in files) / epochs
    write_s = sum(f.write_seconds for f in files) / max(1, sum(f.saved for f in files))
    base_fast, base_med, base_epoch = rates["off"]
    base_steady = [x for t in timers["off"] for x in t.seconds[1:]]
    spread = (min(base_steady) / base_epoch - 1, max(base_steady) / base_epoch - 1)
    names = {"off": "no checkpoint (baseline)", "every_epoch": "a checkpoint every epoch"}
    table = "\n".join([
        f"Checkpoint cost ({os.cpu_count()} cores): the default model, {n_train} training "
        f"clusters, batch {cfg.train.batch_size}, epochs 2-{args.epochs} of {args.repeats} "
        f"run{'s' if args.repeats > 1 else ''} of each, alternating; checkpoint file "
        f"{size_mb:.1f} MB:",
        "",
        "| run | epochs/s (fastest) | ratio | epochs/s (median) | ratio | CPU s an epoch (median) "
        "| ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {names[row]} | {fast:.3f} | {fast / base_fast:.3f} | {med:.3f} | {med / base_med:.3f} "
          f"| {statistics.median(cpu[row]):.2f} "
          f"| {statistics.median(cpu[row]) / statistics.median(cpu['off']):.3f} |"
          for row, (fast, med, _) in rates.items()),
        "",
        f"Measured directly: a checkpoint took {copy_s * 1e3:.1f} ms of the trial's thread (the "
        f"copy to the host) and {write_s * 1e3:.0f} ms of the writing thread, together "
        f"{100 * (copy_s + write_s) / base_epoch:.2f}% of the baseline's median epoch "
        f"({base_epoch:.2f} s; its epochs spread from {100 * spread[0]:+.0f}% to "
        f"{100 * spread[1]:+.0f}% around it, which is why the ratios above are noise).",
    ])
    if args.no_save:
        print(table, flush=True)
        return table
    return emit("checkpoint", table)


if __name__ == "__main__":
    main()
