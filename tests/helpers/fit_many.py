"""Several `lit-posttrain fit` runs, one after another, in the same processes: under DDP or FSDP
the launcher starts the other ranks once and every rank runs the same list, so N runs cost one
process start-up instead of N (most of a tiny run's time on two cores).

    python tests/helpers/fit_many.py RUNS.json

RUNS.json holds a list of `[workdir, [arg, ...]]`: each run starts in its own workdir (its logs
land there) with those `lit-posttrain` arguments.
"""

import gc
import json
import os
import sys

from lit_posttrain.cli import main

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    first_port = None
    for i, (workdir, args) in enumerate(runs):
        if first_port is not None:
            # The launcher chose the first run's port and every rank has it. Each later run takes
            # the next one: the previous run's store may still be listening on its port until
            # collected, and a rank that reaches it first would join a group that is gone.
            os.environ["MASTER_PORT"] = str(first_port + i)
            # Under torchrun the first run's group used the launcher's own store (at the first
            # port); a later one makes its own at its port, hosted by rank 0 as without torchrun.
            os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        main(args)
        gc.collect()
        if "MASTER_PORT" in os.environ and first_port is None:
            first_port = int(os.environ["MASTER_PORT"])
