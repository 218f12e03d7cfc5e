"""The `lit-posttrain` command's entry point: what must be set before torch loads, then the CLI."""

from __future__ import annotations

import os


def main() -> None:
    # OpenMP's idle threads sleep instead of spinning. Two runs side by side on a 2-core machine
    # each took 7.9x their time alone with spinning threads fighting for the cores, 1.8x with
    # sleeping ones; a run alone was as fast either way (benchmarks/side_by_side.py, README
    # "Sharing a machine"). Read once, when torch's OpenMP runtime starts: set before it loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lit_posttrain.cli import main as cli_main

    cli_main()
