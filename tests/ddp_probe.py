"""Started by test_distributed.py under torchrun: a real training run (train() with DDP) whose
ranks also record which train samples each step gave them, to show that the shares are disjoint
and cover the epoch. Not a test module; pytest does not collect it.

    python -m torch.distributed.run ... tests/ddp_probe.py CONFIG_JSON OUT TRAIN_SAMPLES
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from etarec.config import build_config
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import PreparedData, Samples
from etarec.train.distributed import World
from etarec.train.trainer import train


def cut_train(data: PreparedData, size: int) -> PreparedData:
    """The data with its train split cut to the first `size` samples (a chosen last-batch size)."""
    train_split = data.splits["train"]
    data.splits["train"] = Samples(**{f.name: getattr(train_split, f.name)[:size] for f in fields(Samples)})
    return data


def main() -> None:
    config = build_config(json.loads(sys.argv[1]))
    out, size = Path(sys.argv[2]), int(sys.argv[3])
    data = cut_train(ensure_prepared(config.data, log=lambda *_: None), size)
    steps = []
    split_batch = World.local_batch

    def recording(world: World, global_index):
        local, scale = split_batch(world, global_index)
        steps.append({"global": global_index.tolist(), "local": local.tolist(), "scale": scale})
        return local, scale

    World.local_batch = recording
    train(config, out, progress=False, log=lambda *_: None, data=data)
    (out / f"steps-rank{os.environ['RANK']}.json").write_text(json.dumps(steps))


if __name__ == "__main__":
    main()
