"""Issue 13 item 5: held-out tau against training tokens seen, EAGLE-2 vs FSPAD (scripts/long_runs.sh).

    python benchmarks/learning_curve.py benchmarks/results/learning-curve-smollm2 \
        --shipped "3000 steps on ~3.3k first-turn examples" --goal fspad=2.6

Reads `<method>-<step>.json` (fspad-hf bench on the held-out set at a milestone), `shipped.json` (the first
shipped heads, for reference) and `data.json` (the run's data: examples, tokens and loss tokens per example,
batch size), and writes `curve.md` (and `curve.png` with matplotlib). Tokens seen = step x batch x mean
tokens per example: the expectation under the run's random sampling, not a count. A head continued from
another (PosS from the pair's FSPAD head, a second phase of the pair on new data) is named by its lineage's
total step, so its tokens seen include its parent's; a phase on other data from lineage step N has its own
`data-from-<N>.json`, which prices the steps from N on of the methods it lists (`"methods"`; PosS, continued
on the first data, keeps the first pricing).

The trend: per method, a least-squares fit tau = a + b * log2(tokens seen) over its first phase (one run, one
LR schedule), so b is the tau gained per doubling of tokens seen, and with `--goal method=tau` the tokens at
which the fitted line reaches the goal; a later phase's milestones are listed against the fit's prediction.
It is a rough guide: past one epoch the tokens are repeats, and a learning-rate anneal lifts the last points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_points(out: Path) -> list[tuple[str, int, float, list | None, int | None]]:
    """(method, step, tau, acceptance per position, identical turns) of every `<method>-<step>.json`."""
    rows = []
    for path in sorted(out.glob("*-*.json")):
        method, step = path.stem.rsplit("-", 1)
        if not step.isdigit() or method == "data-from":  # data-from-<N>.json: a phase's data, not a milestone
            continue
        overall = json.loads(path.read_text())["methods"][method]["overall"]
        rows.append((method, int(step), overall["tau"], overall.get("acceptance_per_position"), overall.get("identical_turns")))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def read_phases(out: Path, method: str | None = None) -> list[tuple[int, dict]]:
    """(first lineage step, data record) of `data.json` (step 0) and of each `data-from-<N>.json` that prices
    `method` (its "methods" list holds it; None: every phase), by step."""
    phases = [(0, json.loads((out / "data.json").read_text()))]
    for path in out.glob("data-from-*.json"):
        data = json.loads(path.read_text())
        if method is None or method in data.get("methods", [method]):
            phases.append((int(path.stem.rsplit("-", 1)[1]), data))
    return sorted(phases, key=lambda x: x[0])


def seen(step: int, phases: list[tuple[int, dict]], key: str = "mean_tokens") -> float:
    """Tokens seen by lineage step `step` (`key`: mean_tokens, or mean_loss_tokens for assistant tokens): each
    phase's steps priced at its own data's batch x mean tokens per example."""
    total = 0.0
    for i, (start, data) in enumerate(phases):
        end = phases[i + 1][0] if i + 1 < len(phases) else step
        total += max(0, min(step, end) - start) * data["batch_size"] * data[key]
    return total


def log_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares tau = a + b * log2(x) over (x, tau) points with x > 0: (a, b); None with fewer than 3 x values
    or when they span less than one doubling (a fine-tuning phase's own points say nothing of a trend)."""
    pts = [(x, y) for x, y in points if x > 0]
    xs = {x for x, _ in pts}
    if len(xs) < 3 or max(xs) < 2 * min(xs):
        return None
    b, a = np.polyfit(np.log2([x for x, _ in pts]), [y for _, y in pts], 1)
    return float(a), float(b)


def tokens_for(fit: tuple[float, float], goal: float) -> float | None:
    """x at which a + b * log2(x) = goal; None when the line does not rise."""
    a, b = fit
    return 2 ** ((goal - a) / b) if b > 0 else None


def trend_lines(rows, phases, goals: dict[str, float]) -> list[str]:
    """The trend table, fitted on each method's first phase only (one run, one LR schedule), and, for a later
    phase on new data, its milestones against what that fit predicts at their tokens seen: the test of the
    claim that fresh tokens keep adding tau at the fitted rate. (A later phase restarts the LR warm-up, so its
    early milestones dip; its point at the end of its anneal is the one to compare.)"""
    lines = ["", "Trend (least squares over each method's first-phase milestones, tau = a + b log2(tokens seen); a rough "
             "guide: tokens past one epoch are repeats and the LR anneal lifts the last points):", "",
             "| method | points | tau per doubling of tokens | goal | tokens seen at the goal (fit) |", "|---|---|---|---|---|"]
    tests = []
    for method in sorted({r[0] for r in rows}):
        later = phases[method][1][0] if len(phases[method]) > 1 else None  # first step priced by new data
        pts = [(s, seen(s, phases[m]) / 1e6, t) for m, s, t, _, _ in rows if m == method]
        fit = log_fit([(x, t) for s, x, t in pts if later is None or s <= later])
        if fit is None:
            continue
        goal = goals.get(method)
        need = tokens_for(fit, goal) if goal is not None else None
        at = "-" if goal is None else (f"~{need:,.0f}M" if need is not None else "not reached (flat)")
        first = [p for p in pts if later is None or p[0] <= later]
        lines.append(f"| {method} | {len(first)} | {fit[1]:+.3f} | {goal if goal is not None else '-'} | {at} |")
        a, b = fit
        tests += [f"| {method} | {s} | {x:.2f}M | {t:.3f} | {a + b * np.log2(x):.3f} | {t - a - b * np.log2(x):+.3f} |"
                  for s, x, t in pts if later is not None and s > later]
    if tests:
        lines += ["", "Later phases on new data against the first phase's fit (the LR warms up again at a phase's start, "
                  "so its early milestones dip; compare the end of its anneal):", "",
                  "| method | step | tokens seen | held-out tau | fit says | measured - fit |", "|---|---|---|---|---|---|", *tests]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="benchmarks/results/learning-curve-smollm2", type=Path)
    p.add_argument("--shipped", default="3000 steps on ~3.3k first-turn examples, multi-epoch",
                   help="how the first shipped heads (shipped.json) were trained: the reference rows' text")
    p.add_argument("--goal", action="append", default=[], metavar="METHOD=TAU",
                   help="the issue's held-out tau goal for a method (repeatable): the trend says when the fit reaches it")
    a = p.parse_args(argv)
    out = a.out
    goals = {}
    for g in a.goal:
        method, _, tau = g.partition("=")
        try:
            goals[method] = float(tau)
        except ValueError:
            p.error(f"--goal {g!r}: expected METHOD=TAU, e.g. fspad=2.6")
    rows = read_points(out)
    phases = {m: read_phases(out, m) for m, *_ in rows}  # each method's lineage prices its steps by its own data
    lines = [f"Data{'' if start == 0 else f' from lineage step {start:,} on (' + ', '.join(data.get('methods', [])) + ')'}: "
             f"{data['examples']:,} training examples ({data['source']}), {data['mean_tokens']:.0f} tokens and "
             f"{data['mean_loss_tokens']:.0f} assistant (loss) tokens per example on average; batch {data['batch_size']}."
             for start, data in read_phases(out)]
    lines += ["",
             "| method | step | tokens seen | assistant tokens seen | held-out tau | acceptance p1/p2/p3 | identical turns |",
             "|---|---|---|---|---|---|---|"]

    def accept(acc):
        return " / ".join(f"{x:.2f}" for x in (acc or [])[:3]) or "-"

    shipped = out / "shipped.json"
    if shipped.is_file():
        for method, summary in json.loads(shipped.read_text())["methods"].items():
            if method != "baseline":
                o = summary["overall"]
                lines.append(f"| {method} (first shipped heads) | - | {a.shipped} | - | {o['tau']:.3f} | "
                             f"{accept(o.get('acceptance_per_position'))} | {o.get('identical_turns')} |")
    lines += [f"| {m} | {s} | {seen(s, phases[m]) / 1e6:.2f}M | {seen(s, phases[m], 'mean_loss_tokens') / 1e6:.2f}M | {t:.3f} | "
              f"{accept(acc)} | {i} |" for m, s, t, acc, i in rows]
    lines += trend_lines(rows, phases, goals)
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
        pts = [(seen(s, phases[m]) / 1e6, t) for m, s, t, _, _ in rows if m == method]
        plt.plot(*zip(*pts), marker="o", label=method)
    for method, goal in goals.items():
        plt.axhline(goal, linestyle=":", color="gray")
        plt.annotate(f"{method} goal {goal}", (0, goal), textcoords="offset points", xytext=(4, 3), fontsize=8)
    plt.xlabel("training tokens seen (M)")
    plt.ylabel("held-out tau (fp32, static 8/3/4)")
    plt.legend()
    plt.savefig(out / "curve.png", dpi=120)


if __name__ == "__main__":
    main()
