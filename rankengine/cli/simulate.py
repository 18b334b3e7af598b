"""``rankengine simulate``: write a simulated impression log."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/funnel"), show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="requests to simulate (each shows --slate-size items)")
@click.option("--slate-size", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--correlation", type=float, default=0.5, show_default=True,
              help="correlation of click and conversion factors")
@click.option("--inconsistent-rate", type=float, default=0.0, show_default=True)
@click.option("--position-bias", type=float, default=0.6, show_default=True,
              help="click logit -= position_bias * log(position)")
@click.option("--logger-bias", type=float, default=0.0, show_default=True,
              help="> 0: a logging ranker shows promoted brands first (confounds position)")
@click.option("--sequence-effect", type=float, default=0.0, show_default=True,
              help="> 0: write each request's recent behaviour sequence (seq_* columns) and "
                   "make clicks and orders depend on it by this much (0: the world without "
                   "sequences, bit-identical)")
@click.option("--sequence-max-len", type=int, default=50, show_default=True,
              help="the most recent behaviours kept per request")
@click.option("--write-sequences", is_flag=True,
              help="write the seq_* columns even with --sequence-effect 0 (a placebo world)")
@click.option("--shards", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="files per split (a directory of part-NNNNN.parquet when > 1)")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=7, show_default=True)
def simulate(output: Path, requests: int, slate_size: int, correlation: float,
             inconsistent_rate: float, position_bias: float, logger_bias: float,
             sequence_effect: float, sequence_max_len: int, write_sequences: bool, shards: int,
             seed: int) -> None:
    """Write a simulated impression log (click → favorite / order → pay, dwell time)."""
    from rankengine.simulate import SimulationConfig, write_funnel

    try:
        config = SimulationConfig(requests=requests, slate_size=slate_size,
                                  conversion_correlation=correlation,
                                  inconsistent_rate=inconsistent_rate,
                                  position_bias=position_bias, logger_bias=logger_bias,
                                  sequence_effect=sequence_effect,
                                  sequence_max_len=sequence_max_len,
                                  write_sequences=write_sequences, seed=seed)
        paths = write_funnel(output, config, shards=shards)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a full disk or a file that cannot be replaced, mid-way
        raise click.ClickException(f"{exc.filename or output}: cannot write the funnel: "
                                   f"{exc.strerror or exc}") from exc
    for split, path in paths.items():
        click.echo(f"{split}: {path}")
