"""Issue 12 targets, read from the committed grid cells (benchmarks/run_grid.sh results).

    python benchmarks/grid_summary.py                      # every benchmarks/results/grid-*/<cell>/results.json
    python benchmarks/grid_summary.py --output benchmarks/results/grid-summary.md

Per cell: the overall speed-ups, the default head's speed-up over prompt lookup's (target: >= 1.3 in
fp32 at all threads), and the categories where the default is below plain decoding (< 1.0x) or below
0.95x the best of prompt lookup, the static tree and retrieval only. Nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OTHERS = ("pld-10", "static", "retrieval")
NEAR_TIE = 0.25  # largest logit gap between the two diverging tokens still called a bf16 near-tie


def cell_rows(path: Path) -> tuple[str, list[str]]:
    data = json.loads(path.read_text())
    cfg, methods = data["config"], data["methods"]
    name = f"{path.parent.parent.name.removeprefix('grid-')} / {path.parent.name}"
    speed = {m: methods[m]["overall"]["speedup"] for m in methods}
    default = methods["default"]
    slow, behind = [], []
    for cat, row in default["per_category"].items():
        best = max(methods[m]["per_category"][cat]["speedup"] for m in OTHERS if m in methods)
        if row["speedup"] < 1.0:
            slow.append(f"{cat} {row['speedup']:.3f}x")
        if row["speedup"] < 0.95 * best:
            behind.append(f"{cat} {row['speedup']:.2f}x vs {best:.2f}x")
    identical = all(m["overall"].get("identical_to_baseline") for m in methods.values())
    # a divergence counts as a near-tie only when the bench's re-run of the target on the shared prefix found both
    # tokens its top two with a logit gap within bf16 rounding (recorded per method in results.json)
    ties = [m.get("divergences") for m in methods.values() if not m["overall"].get("identical_to_baseline")]
    near_ties = all(t and t.get("both_in_top2") and t.get("max_pair_gap", 1.0) <= NEAR_TIE for t in ties)
    line = (f"| {name} | {cfg['questions']} | " + " | ".join(f"{speed.get(m, float('nan')):.2f}x" for m in ("pld-10", "default", "static", "retrieval"))
            + f" | {speed['default'] / speed['pld-10']:.2f} | {default['overall']['tau']:.2f} | "
            + f"{'yes' if identical else 'no (bf16 near-ties)' if near_ties and cfg['dtype'] == 'bfloat16' else 'NO'} | "
            + f"{', '.join(slow) or '-'} | {', '.join(behind) or '-'} |")
    return name, [line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default=None, help="also write the table here")
    a = p.parse_args()
    lines = ["| cell (machine / target-dtype-threads) | questions | prompt lookup | default | static 8/3/4 | retrieval | default / PLD | default tau | identical | default < 1.0x | default < 0.95x best |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("grid-*/*/results.json")):
        lines += cell_rows(path)[1]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.output:
        Path(a.output).write_text(text)


if __name__ == "__main__":
    main()
