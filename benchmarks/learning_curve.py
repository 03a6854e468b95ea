"""Issue 13 item 5: held-out tau against training tokens seen, EAGLE-2 vs FSPAD (scripts/long_runs.sh).

    python benchmarks/learning_curve.py benchmarks/results/learning-curve-smollm2

Reads `<method>-<step>.json` (fspad-hf bench on the held-out set at a milestone), `shipped.json` (the first
shipped heads, for reference) and `data.json` (the run's data: examples, tokens and loss tokens per example,
batch size), and writes `curve.md` (and `curve.png` with matplotlib). Tokens seen = step x batch x mean
tokens per example: the expectation under the run's random sampling, not a count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    data = json.loads((out / "data.json").read_text())
    per_step = data["batch_size"] * data["mean_tokens"]
    loss_per_step = data["batch_size"] * data["mean_loss_tokens"]
    rows = []
    for path in sorted(out.glob("*-*.json")):
        method, step = path.stem.rsplit("-", 1)
        if not step.isdigit():
            continue
        overall = json.loads(path.read_text())["methods"][method]["overall"]
        rows.append((method, int(step), overall["tau"], overall.get("acceptance_per_position"), overall.get("identical_turns")))
    rows.sort(key=lambda r: (r[1], r[0]))
    lines = [f"Data: {data['examples']:,} training examples ({data['source']}), {data['mean_tokens']:.0f} tokens and "
             f"{data['mean_loss_tokens']:.0f} assistant (loss) tokens per example on average; batch {data['batch_size']}.", "",
             "| method | step | tokens seen | assistant tokens seen | held-out tau | acceptance p1/p2/p3 | identical turns |",
             "|---|---|---|---|---|---|---|"]

    def accept(a):
        return " / ".join(f"{x:.2f}" for x in (a or [])[:3]) or "-"

    shipped = out / "shipped.json"
    if shipped.is_file():
        for method, summary in json.loads(shipped.read_text())["methods"].items():
            if method != "baseline":
                o = summary["overall"]
                lines.append(f"| {method} (first shipped heads) | 3000 | ~3.3k first-turn examples, multi-epoch | - | {o['tau']:.3f} | "
                             f"{accept(o.get('acceptance_per_position'))} | {o.get('identical_turns')} |")
    lines += [f"| {m} | {s} | {s * per_step / 1e6:.2f}M | {s * loss_per_step / 1e6:.2f}M | {t:.3f} | {accept(a)} | {i} |"
              for m, s, t, a, i in rows]
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for method in sorted({r[0] for r in rows}):
        pts = [(s * per_step / 1e6, t) for m, s, t, _, _ in rows if m == method]
        plt.plot(*zip(*pts), marker="o", label=method)
    plt.xlabel("training tokens seen (M)")
    plt.ylabel("held-out tau (fp32, static 8/3/4)")
    plt.legend()
    plt.savefig(out / "curve.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/learning-curve-smollm2"))
