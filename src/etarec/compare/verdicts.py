"""The lines under a table that check a suite's `paper:` claims on the summary rows: whether its
ordering holds on mean test AUC, and each `versus` pair's AUC gap and cost ratios, seed by seed.
A suite without a `paper:` section gets none."""
from __future__ import annotations

from etarec.compare.suite import Paper, Sweep
from etarec.compare.tables import stats


def _paired(a: dict, b: dict, key: str, combine) -> dict | None:
    """combine(a's value, b's value) on every seed both rows ran, as mean/std and the count n; None
    without a common seed. Pairing by seed sets runs of one sitting against each other: a noisy
    machine's speed moves more between sittings than one model's cost differs from another's."""
    seeds = [seed for seed in a["by_seed"] if seed in b["by_seed"]]
    if not seeds:
        return None
    return {**stats([combine(a["by_seed"][s][key], b["by_seed"][s][key]) for s in seeds]), "n": len(seeds)}


def _spread(cell: dict, digits: int) -> str:
    return f" ± {cell['std']:.{digits}f}" if cell["n"] > 1 else ""


def _present_chain(paper: Paper, names) -> tuple[list[str], list[bool]]:
    """The claim's ordering over the entries that have rows. Leaving out an entry joins its two
    links into one, strict when either was: a < b <= c without b claims a < c."""
    chain, strict, link_strict = [], [], False
    for i, name in enumerate(paper.ordering):
        if name in names:
            if chain:
                strict.append(link_strict)
            chain.append(name)
            link_strict = False
        link_strict = link_strict or (i < len(paper.strict) and paper.strict[i])
    return chain, strict


def ordering_verdict(rows: list[dict], paper: Paper | None) -> list[str]:
    """Whether the paper's ordering holds on mean test AUC, naming each pair that breaks it with
    the per-seed difference (mean ± std) where there are several seeds to tell it from noise."""
    by_name = {row["name"]: row for row in rows}
    chain, strict = _present_chain(paper, by_name) if paper else ([], [])
    if len(chain) < 2:
        return []
    auc = {name: by_name[name]["test_auc"]["mean"] for name in chain}

    def broken_pair(a: str, b: str) -> str:
        gap = _paired(by_name[b], by_name[a], "test_auc", lambda x, y: x - y)
        paired = f" ({b} - {a} by seed: {gap['mean']:+.4f}{_spread(gap, 4)}, {gap['n']} seeds)" if gap and gap["n"] > 1 else ""
        return f"{a} {auc[a]:.4f} vs {b} {auc[b]:.4f}{paired}"

    links = list(zip(chain, chain[1:], strict))
    broken = [broken_pair(a, b) for a, b, below in links if not (auc[a] < auc[b] if below else auc[a] <= auc[b])]
    claim = chain[0] + "".join(f" {'<' if below else '<='} {b}" for _, b, below in links)
    return [f"- Paper ordering ({claim}, mean test AUC): "
            + ("holds." if not broken else "does NOT hold: " + "; ".join(broken) + ".")]


def versus_verdicts(rows: list[dict], paper: Paper | None, prefix: str = "") -> list[str]:
    """Each `versus` pair (entry vs reference) with rows for both: the test AUC gap and the cost
    ratios (training time per epoch, inference throughput), each taken seed by seed."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for name, reference in paper.versus if paper else []:
        if name not in by_name or reference not in by_name:
            continue
        entry, ref = by_name[name], by_name[reference]
        gap = _paired(entry, ref, "test_auc", lambda x, y: x - y)
        if gap is None:
            continue
        cost = _paired(entry, ref, "train_seconds_per_epoch", lambda x, y: x / y)
        speed = _paired(entry, ref, "infer_samples_per_second", lambda x, y: x / y)
        seeds = f" (by seed, {gap['n']} seeds)" if gap["n"] > 1 else ""
        lines.append(f"- {prefix}{name} vs {reference}{seeds}: test AUC {gap['mean']:+.4f}{_spread(gap, 4)}; "
                     f"training time per epoch x{cost['mean']:.2f}{_spread(cost, 2)}; "
                     f"inference throughput x{speed['mean']:.2f}{_spread(speed, 2)}.")
    return lines


def sweep_verdicts(rows: list[dict], sweep: Sweep, paper: Paper | None) -> list[str]:
    """The `versus` pairs at each value of the sweep (the ETA paper's Table 7 question: does ETA
    stay close in AUC while full attention's cost grows?)."""
    return [line for value in sweep.values
            for line in versus_verdicts([row for row in rows if row["value"] == value], paper, f"{sweep.key}={value}: ")]
