"""Data parallel for the analysis commands: each rank measures its share of the samples, rank 0 merges.

Under ``accelerate launch`` (or ``torchrun``) the lmms-eval model has ``rank`` / ``world_size`` and an
accelerator. `sharded` gives rank r the samples r, r + world, ... (interleaved, so every rank gets both
directions and every kind), writes the rank's rows to ``<out>/ranks/rank<r>of<world>.json`` atomically,
waits for every rank, and on rank 0 returns the rows of all ranks in the order one process would have
produced them (by sample, then as measured); other ranks get None. A rank file whose key (the
measurement's parameters and the rank's sample ids) matches is reused: a killed run resumes per rank.
Batches hold other neighbours than in one process, so values agree to float tolerance, not bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from mf_harness.checks import atomic_write_text

__all__ = ["sharded"]


def sharded(lm, samples: Sequence, out: Path, measure: Callable[[Sequence], dict[str, list[dict]]],
            params: dict) -> dict[str, list[dict]] | None:
    rank, world = lm.rank, lm.world_size
    if world == 1:
        return measure(samples)
    mine = list(samples[rank::world])
    key = hashlib.sha256(json.dumps([params, [(s.follow, s.sample_id) for s in mine]], sort_keys=True,
                                    default=str).encode()).hexdigest()
    path = Path(out) / "ranks" / f"rank{rank}of{world}.json"
    part = None
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            part = saved["rows"] if saved.get("key") == key else None
        except (json.JSONDecodeError, KeyError, TypeError):
            part = None
    if part is None:
        part = measure(mine)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "rows": part}))
    lm.accelerator.wait_for_everyone()
    if rank != 0:
        return None
    order = {(s.follow, s.sample_id): i for i, s in enumerate(samples)}
    merged: dict[str, list[dict]] = {}
    for r in range(world):
        rows = json.loads((Path(out) / "ranks" / f"rank{r}of{world}.json").read_text())["rows"]
        for name, values in rows.items():
            merged.setdefault(name, []).extend(values)
    return {name: sorted(values, key=lambda row: order[(row["follow"], row["sample_id"])])
            for name, values in merged.items()}
