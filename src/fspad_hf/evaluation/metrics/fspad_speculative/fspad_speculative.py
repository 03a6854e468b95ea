"""fspad_speculative: mean accepted length (tau), speed-up and exact-match fidelity of speculative decoding.

A standalone `evaluate` module (it imports only `datasets` and `evaluate`), loadable offline:

    import evaluate, fspad_hf.evaluation.metrics
    metric = evaluate.load(str(fspad_hf.evaluation.metrics.metric_path()))   # or the path of this file / its folder

Input schema: one row per generated turn (one `generate()` call) of the evaluated method, paired with
the same prompt decoded by plain `generate()` (the reference):

    predictions       list[int]  new token ids from speculative decoding (prompt excluded)
    references        list[int]  new token ids from plain decoding of the same prompt
    forwards          int        target forward passes of the speculative call, prefill included (or None)
    wall_s            float      wall time of the speculative call in seconds (or None)
    reference_wall_s  float      wall time of the plain call in seconds (or None)

`fspad_hf.evaluation.metrics.records_to_inputs(records, method)` builds these columns from the per-turn records
of `fspad-hf bench` (`<output>.partial.jsonl`).
"""

import datasets
import evaluate

from fspad_hf.decoding.stats import tau as mean_accepted_length  # the one definition of tau

_CITATION = """\
@misc{fspad-hf,
  title = {fspad-hf: lossless tree speculative decoding with feature-level draft heads for transformers},
  note = {FSPAD (feature sampling + partial alignment distillation), EAGLE-2 and PosS heads}
}
"""

_DESCRIPTION = """\
Aggregates speculative-decoding runs the way Spec-Bench style benchmarks do. tau (mean accepted length)
is the number of new tokens per target forward, the prefill and its token excluded:
tau = (sum(len(predictions)) - N) / (sum(forwards) - N) over N turns (plain decoding gives 1.0).
speedup is the throughput ratio sum(len(predictions)) / sum(wall_s) over sum(len(references)) /
sum(reference_wall_s). exact_match is the fraction of turns whose tokens equal the reference exactly
(greedy decoding is lossless, so anything below 1.0 there is a bug or a low-precision near-tie);
prefix_match is the mean fraction of a turn reproduced before the first differing token.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): new token ids per turn from speculative decoding.
    references (`list[list[int]]`): new token ids per turn from plain decoding of the same prompts.
    forwards (`list[int]`): target forwards per speculative turn (prefill included); None entries -> tau is None.
    wall_s (`list[float]`): seconds per speculative turn; None entries -> throughput and speedup are None.
    reference_wall_s (`list[float]`): seconds per plain turn; None entries -> speedup is None.
Returns:
    num_turns (`int`), new_tokens (`int`),
    tau (`float` or None): mean accepted length, bonus token included,
    exact_match (`float`): fraction of turns identical to the reference,
    prefix_match (`float`): mean fraction of each turn matching the reference before the first difference,
    tokens_per_s / reference_tokens_per_s (`float` or None), speedup (`float` or None).
Examples:
    >>> metric = evaluate.load("path/to/fspad_speculative")
    >>> metric.compute(predictions=[[5, 6, 7, 8]], references=[[5, 6, 7, 8]], forwards=[3],
    ...                wall_s=[0.5], reference_wall_s=[1.0])["tau"]
    1.5
"""


def _total(values):
    return None if any(v is None for v in values) else sum(values)


def _rate(tokens, seconds):
    return None if seconds is None or seconds <= 0 else tokens / seconds


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FspadSpeculative(evaluate.Metric):
    """tau, speed-up and fidelity of speculative decoding against plain decoding."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "forwards": datasets.Value("int64"),
                    "wall_s": datasets.Value("float64"),
                    "reference_wall_s": datasets.Value("float64"),
                }
            ),
            reference_urls=["https://github.com/hemingkx/Spec-Bench"],
        )

    def _compute(self, predictions, references, forwards, wall_s, reference_wall_s):
        n = len(predictions)
        if n == 0:
            raise ValueError("fspad_speculative needs at least one turn.")
        new_tokens = sum(len(p) for p in predictions)
        ref_tokens = sum(len(r) for r in references)
        total_forwards = _total(forwards)
        if total_forwards is None:
            tau = None
        else:
            tau = mean_accepted_length(new_tokens, total_forwards, n)
        tokens_per_s = _rate(new_tokens, _total(wall_s))
        reference_tokens_per_s = _rate(ref_tokens, _total(reference_wall_s))
        speedup = tokens_per_s / reference_tokens_per_s if tokens_per_s and reference_tokens_per_s else None
        exact = sum(list(p) == list(r) for p, r in zip(predictions, references)) / n
        prefix = sum(_common_prefix(p, r) / max(len(p), len(r), 1) if (p or r) else 1.0
                     for p, r in zip(predictions, references)) / n
        return {
            "num_turns": n,
            "new_tokens": new_tokens,
            "tau": tau,
            "exact_match": exact,
            "prefix_match": prefix,
            "tokens_per_s": tokens_per_s,
            "reference_tokens_per_s": reference_tokens_per_s,
            "speedup": speedup,
        }
