"""Sharing heads: Hub repos with a model card and `custom_generate`.

A shared head repo holds:

    README.md                          model card (YAML metadata + what/how/training/benchmark/limits)
    config.json, model.safetensors     `FSPADDraftModel.save_pretrained` (no target embedding / LM head)
    custom_generate/generate.py        self-contained pinned copy of the decoding (no fspad-hf needed)
    custom_generate/requirements.txt   runtime pins checked by transformers before running it

`save_head_repo` writes that folder, `push_head` uploads it (or only writes it with `dry_run_dir`),
`fspad-hf push` is the command line (`cmd_push`). `head.push_to_hub(repo_id)` (PreTrainedModel's) only
uploads config + weights; use `push_head` for the full repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from ..decoding.settings import TreeSettings
from ..evaluation.benchmark import identical_cell
from ..head.modeling import FSPADDraftModel
from .standalone import build_generate_py, card_template_path, requirements_txt

logger = logging.getLogger(__name__)

REPO_PLACEHOLDER = "<namespace>/<head-repo>"
EXPECTED_FILES = ("README.md", "config.json", "model.safetensors", "custom_generate/generate.py",
                  "custom_generate/requirements.txt")

# License of the registered targets (a head trained on a model's outputs inherits its terms).
TARGET_LICENSES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "apache-2.0",
    "google/gemma-3-270m": "gemma",
}
LICENSE_PREFIXES = (("HuggingFaceTB/SmolLM2-", "apache-2.0"), ("google/gemma-3-", "gemma"))
LICENSE_NOTES = {
    "gemma": "Gemma Terms of Use (https://ai.google.dev/gemma/terms), inherited from the target model: the head "
             "is trained on its features and outputs and only works together with it.",
    "apache-2.0": "Apache-2.0, the license of the target model this head was trained for.",
}
TRAINING_FIELDS = (  # (label, keys tried in order)
    ("data", ("data", "dataset", "data_description")),
    ("examples", ("examples", "num_examples")),
    ("training tokens", ("tokens", "train_tokens", "num_input_tokens_seen")),
    ("steps", ("max_steps", "global_step")),
    ("epochs", ("num_train_epochs",)),
    ("learning rate", ("learning_rate",)),
    ("learning-rate schedule", ("lr_schedule",)),
    ("unroll steps", ("unroll_steps",)),
    ("hardware", ("hardware",)),
    ("wall time", ("train_runtime",)),
    ("final training loss", ("train_loss",)),
    ("held-out top-1 agreement per draft position", ("eval_top1_per_position",)),
    ("held-out tau", ("heldout_tau",)),
    ("seed", ("seed",)),
)


# ------------------------------------------------------------------------------------ card pieces
def is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repo id (`owner/name`) rather than a local path."""
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def target_license(target_name: str | None) -> str | None:
    """License id of a known target (exact id or model family), else None."""
    if not target_name:
        return None
    if target_name in TARGET_LICENSES:
        return TARGET_LICENSES[target_name]
    return next((lic for prefix, lic in LICENSE_PREFIXES if target_name.startswith(prefix)), None)


def method_tags(config) -> list[str]:
    base = ["eagle-2"] if not (config.feature_sampling or config.partial_alignment) else ["fspad"]
    return base + (["poss"] if config.num_draft_layers > 1 else [])


def _as_dict(training_args: Any) -> dict:
    if training_args is None:
        return {}
    if hasattr(training_args, "to_dict"):  # a TrainingArguments object
        return training_args.to_dict()
    return dict(training_args)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"


def training_rows(training_args: Any) -> list[tuple[str, str]]:
    """(label, value) rows of the training record: data, budget, optimiser settings."""
    info = _as_dict(training_args)
    rows = []
    for label, keys in TRAINING_FIELDS:
        value = next((info[k] for k in keys if info.get(k) not in (None, "", -1)), None)
        if value is not None and not (label == "epochs" and info.get("max_steps", -1) > 0):
            rows.append((label, _fmt(value) + (" s" if label == "wall time" else "")))
    batch = info.get("per_device_train_batch_size")
    if batch:
        accum, world = info.get("gradient_accumulation_steps", 1) or 1, info.get("world_size", 1) or 1
        rows.append(("batch size", f"{batch * accum * world} ({batch} per device x {accum} accumulation x {world} process(es))"))
    return rows


def load_benchmark(benchmark: dict | str | Path | None) -> dict | None:
    """A benchmark summary (`fspad-hf bench` JSON layout) from a dict or a JSON file."""
    if benchmark is None or isinstance(benchmark, dict):
        return benchmark
    return json.loads(Path(benchmark).read_text(encoding="utf-8"))


def benchmark_context(summary: dict) -> dict:
    """Rows of the card's benchmark tables from a benchmark summary."""
    methods = summary.get("methods", {})
    config = summary.get("config", {})
    overall = [
        {"method": name, "tau": f"{m['overall']['tau']:.2f}", "speedup": f"{m['overall'].get('speedup', 1.0):.2f}x",
         "tokens_per_s": f"{m['overall'].get('tokens_per_s', 0.0):.1f}", "identical": identical_cell(m["overall"])}
        for name, m in methods.items()
    ]
    categories = sorted({c for m in methods.values() for c in m.get("per_category", {})})
    per_category = []
    for cat in categories:
        cells = []
        for m in methods.values():
            pc = m.get("per_category", {}).get(cat)
            cells.append(f"{pc.get('speedup', 1.0):.2f}x ({pc['tau']:.2f})" if pc else "-")
        per_category.append({"category": cat, "cells": cells})
    setup_keys = (("target", "target"), ("machine", "machine"), ("torch", "torch"), ("threads", "threads"),
                  ("questions", "questions"), ("max new tokens", "max_new_tokens"), ("temperature", "temperature"),
                  ("tree", "tree"))
    setup = [(label, config[key]) for label, key in setup_keys if config.get(key) not in (None, {}, "")]
    trees = head_trees(config.get("heads") or [])
    if trees:
        setup.append(("trees", trees))
    return {"overall": overall, "methods": list(methods), "categories": categories, "per_category": per_category,
            "setup": setup, "dtype": config.get("dtype", "float32"),
            "decoding": "Greedy decoding" if not config.get("temperature") else f"Sampling at temperature {config['temperature']}"}


def head_trees(specs: list[str]) -> str:
    """How each benchmarked head drafted, from its `NAME=PATH[@T,D,K][+...]` spec (bench --head):
    `fspad static (8 tokens, depth 3, top-k 4)`; a head without a suffix used its own defaults."""
    described = []
    for spec in specs:
        name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
        path, keywords = TreeSettings.parse_suffix(rest)
        shape = (f"{keywords['tree_total_tokens']} tokens, depth {keywords['tree_depth']}, top-k {keywords['tree_top_k']}"
                 if "tree_total_tokens" in keywords else None)
        policy = keywords.get("tree_policy")
        text = (f"adaptive (at most {shape or 'the head default shape'})" if policy == "adaptive" else
                f"static ({shape})" if policy == "static" else "with its own tree defaults")
        if keywords.get("retrieval_branches"):
            text += f" + {keywords['retrieval_branches']} retrieval branches"
        described.append(f"{name or Path(path).name} {text}")
    return ", ".join(described)


def card_metadata(head, training_args: Any = None, license_id: str | None = None) -> ModelCardData:
    """YAML metadata: library, base model, license, tags, datasets."""
    cfg = head.config
    datasets = _as_dict(training_args).get("datasets")
    return ModelCardData(
        library_name="fspad-hf",
        base_model=cfg.target_name_or_path if is_hub_id(cfg.target_name_or_path) else None,
        license=license_id,
        tags=["speculative-decoding", "draft-model", *method_tags(cfg), "custom_generate", "transformers"],
        datasets=[datasets] if isinstance(datasets, str) else datasets,
    )


def _num_parameters(head) -> str:
    n = sum(p.numel() for p in head.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def build_model_card(head, training_args: Any = None, benchmark: dict | str | Path | None = None,
                     base_model_license: str | None = None, *, repo_id: str | None = None,
                     default_draft_model: str | None = None, weights_storage: str | None = None,
                     benchmark_note: str | None = None) -> ModelCard:
    """The head's model card, rendered from `model_cards/fspad_head_card.md.j2`.

    training_args: a dict (or `TrainingArguments`) with any of `data`, `datasets` (Hub ids, for the
        metadata), `examples`, `tokens`, `max_steps`, `learning_rate`, `per_device_train_batch_size`, ...
    benchmark: a `fspad-hf bench` summary (dict or JSON path) for the benchmark tables.
    base_model_license: license id; default: the target's, when it is a known target.
    repo_id: used in the usage snippets; default_draft_model: where `custom_generate` loads weights from.
    weights_storage: how the weights are stored when not plainly in `dtype` (e.g. int8, see `fspad_hf.head.storage`).
    benchmark_note: what the attached benchmark measured and what it does not (e.g. an acceptance run on a busy
        machine, whose tokens/s say nothing about speed), shown above its tables.
    """
    from transformers import __version__ as transformers_version

    from .. import __version__ as fspad_version

    cfg = head.config
    target = cfg.target_name_or_path or "unknown target"
    license_id = base_model_license or target_license(cfg.target_name_or_path)
    if license_id is None:
        logger.warning("No license known for target %r: pass base_model_license (--license).", target)
    tc = cfg.target_config or {}
    bench = load_benchmark(benchmark)
    context = dict(
        title=f"{cfg.method_name} draft head for {target}",
        repo_id=repo_id or REPO_PLACEHOLDER,
        default_draft_model=default_draft_model,
        method=cfg.method_name,
        method_description=cfg.method.description + ("; PosS position specialists" if cfg.num_draft_layers > 1 else ""),
        feature_sampling=cfg.feature_sampling, partial_alignment=cfg.partial_alignment,
        num_draft_layers=cfg.num_draft_layers, positions_per_layer=cfg.positions_per_layer,
        num_parameters=_num_parameters(head),
        draft_vocab=(f"full target vocabulary ({cfg.vocab_size} tokens)" if cfg.draft_vocab_size is None else
                     f"{cfg.draft_vocab_size} most frequent target tokens (verification uses the full vocabulary)"),
        target_name=target, target_link=f"https://huggingface.co/{target}" if is_hub_id(target) else None,
        target_architecture=cfg.target_architecture or "?", target_model_type=tc.get("model_type", "?"),
        hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
        tree_total_tokens=cfg.tree_total_tokens, tree_depth=cfg.tree_depth, tree_top_k=cfg.tree_top_k,
        dtype=str(head.dtype).replace("torch.", "") + (f" ({weights_storage})" if weights_storage else ""),
        fspad_version=fspad_version, transformers_version=cfg.transformers_version or transformers_version,
        training_rows=training_rows(training_args),
        bench=benchmark_context(bench) if bench else None,
        benchmark_note=benchmark_note,
        license_note=LICENSE_NOTES.get(license_id, f"`{license_id}`." if license_id else
                                       "Not set: the target model's license applies to this head."),
    )
    card_data = card_metadata(head, training_args, license_id)
    return ModelCard.from_template(card_data, template_path=str(card_template_path()), **context)


# ------------------------------------------------------------------------------------ repo folder
def _plain_head(head):
    if not isinstance(head, FSPADDraftModel):
        raise TypeError(
            f"Expected an FSPADDraftModel, got {type(head).__name__}. Merge PEFT adapters first "
            "(head = peft_model.merge_and_unload())."
        )
    return head


def repo_files(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the files under `folder`, sorted."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def save_head_repo(head, folder: str | Path, card: ModelCard | None = None, *, repo_id: str | None = None,
                   training_args: Any = None, benchmark: dict | str | Path | None = None,
                   base_model_license: str | None = None, benchmark_note: str | None = None) -> Path:
    """Write a shareable head repo into `folder` (see the module docstring for the layout).

    repo_id: the repo the folder is meant for; `custom_generate` then loads the weights from it when the
    caller passes no `draft_model`. The card is built with `build_model_card` unless `card` is given.
    """
    head = _plain_head(head)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head.save_pretrained(folder)
    if card is None:
        card = build_model_card(head, training_args, benchmark, base_model_license, repo_id=repo_id,
                                default_draft_model=repo_id, benchmark_note=benchmark_note)
    card.save(folder / "README.md")
    custom = folder / "custom_generate"
    custom.mkdir(exist_ok=True)
    (custom / "generate.py").write_text(build_generate_py(default_draft_model=repo_id), encoding="utf-8")
    (custom / "requirements.txt").write_text(requirements_txt(), encoding="utf-8")
    logger.info("wrote head repo %s: %s", folder, ", ".join(repo_files(folder)))
    return folder


@dataclass
class PushResult:
    """What `push_head` did: the files of the repo, where they were written, and the commit (if uploaded)."""

    repo_id: str
    files: list[str]
    folder: Path | None = None  # the dry-run folder (None after an upload: a temporary folder was used)
    commit_url: str | None = None

    @property
    def dry_run(self) -> bool:
        return self.commit_url is None


def push_head(head, repo_id: str, *, card: ModelCard | None = None, private: bool = False, token: str | None = None,
              dry_run_dir: str | Path | None = None, commit_message: str = "Upload FSPAD draft head (fspad-hf)",
              training_args: Any = None, benchmark: dict | str | Path | None = None,
              base_model_license: str | None = None, benchmark_note: str | None = None) -> PushResult:
    """Upload `head` as a full repo (card, weights, `custom_generate/`) to `repo_id` on the Hub.

    dry_run_dir: only write the repo folder there; nothing is uploaded and no network call is made.
    Otherwise the repo is created if needed (`private` applies then) and the folder uploaded in one commit.
    """
    kwargs = dict(card=card, repo_id=repo_id, training_args=training_args, benchmark=benchmark,
                  base_model_license=base_model_license, benchmark_note=benchmark_note)
    if dry_run_dir is not None:
        folder = save_head_repo(head, dry_run_dir, **kwargs)
        logger.info("dry run: wrote %s, uploaded nothing", folder)
        return PushResult(repo_id=repo_id, files=repo_files(folder), folder=folder)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="fspad-head-") as tmp:
        folder = save_head_repo(head, tmp, **kwargs)
        files = repo_files(folder)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 repo_type="model")
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("uploaded %d files to %s (%s)", len(files), repo_id, url)
    return PushResult(repo_id=repo_id, files=files, commit_url=url)


# ------------------------------------------------------------------------------------ CLI
def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fspad-hf push",
        description="Share a trained head: model card + weights + custom_generate/ (usable without fspad-hf), "
                    "uploaded to the Hugging Face Hub (or written locally with --dry_run).",
    )
    p.add_argument("--head", required=True, help="head folder (FSPADDraftModel.save_pretrained output, e.g. runs/fspad/final)")
    p.add_argument("--repo_id", required=True, help="target repo on the Hub, e.g. you/smollm2-135m-fspad")
    p.add_argument("--benchmark", default=None, help="results JSON of `fspad-hf bench`, for the card's benchmark tables")
    p.add_argument("--benchmark_note", default=None,
                   help="what the benchmark measured, shown above its tables (e.g. 'acceptance run on a shared core: "
                        "tokens/s are not this head's speed')")
    p.add_argument("--training_args", default=None,
                   help="JSON file with training facts for the card (data, datasets, examples, tokens, max_steps, "
                        "learning_rate, per_device_train_batch_size, ...)")
    p.add_argument("--license", default=None, help="license id (default: inherited from a known target)")
    p.add_argument("--dry_run", default=None, metavar="DIR", help="write the repo folder to DIR and upload nothing")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the cached `hf auth login`)")
    p.add_argument("--commit_message", default="Upload FSPAD draft head (fspad-hf)")
    return p


def cmd_push(argv: list[str]) -> None:
    """`fspad-hf push --head PATH --repo_id ID [--benchmark results.json] [--dry_run DIR] [--private]`."""
    from ..head.modeling import FSPADDraftModel

    a = push_parser().parse_args(argv)
    head = FSPADDraftModel.from_pretrained(a.head)
    training = json.loads(Path(a.training_args).read_text(encoding="utf-8")) if a.training_args else None
    result = push_head(head, a.repo_id, private=a.private, token=a.token, dry_run_dir=a.dry_run,
                       commit_message=a.commit_message, training_args=training, benchmark=a.benchmark,
                       base_model_license=a.license, benchmark_note=a.benchmark_note)
    where = f"written to {result.folder} (dry run, nothing uploaded)" if result.dry_run else f"uploaded: {result.commit_url}"
    print(f"{a.repo_id}: {len(result.files)} files {where}")
    for name in result.files:
        print(f"  {name}")


__all__ = [
    "build_model_card",
    "save_head_repo",
    "push_head",
    "PushResult",
    "cmd_push",
    "push_parser",
    "repo_files",
    "target_license",
    "EXPECTED_FILES",
]


def _head_push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                      token: str | bool | None = None, **kwargs) -> PushResult:
    """`head.push_to_hub(repo_id)`: the full head repo (card, weights, config, custom_generate/), via `push_head`."""
    return push_head(self, repo_id, private=bool(private), token=token,
                     commit_message=commit_message or "Upload FSPAD draft head (fspad-hf)", **kwargs)


# Installed here rather than in modeling_fspad.py: that module is vendored into custom_generate/
# copies, which must not depend on this one.
FSPADDraftModel.push_to_hub = _head_push_to_hub
