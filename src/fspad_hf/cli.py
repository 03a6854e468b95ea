"""`fspad-hf` command line: prepare data, train heads (more subcommands are registered in COMMANDS).

    fspad-hf prepare --target smollm2 --output_dir runs/smollm2-data --max_conversations 2000 --regenerate
    fspad-hf train --target smollm2 --data runs/smollm2-data/distilled.jsonl --method fspad --output_dir runs/fspad
    fspad-hf train ... --method eagle2,fspad    # a head group: same batches, one target forward per step
    fspad-hf carry --checkpoint runs/fspad/checkpoint-1500 --output milestones/x   # continue elsewhere: --continue_from
    fspad-hf <command> --help    # every option, documented
"""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

logger = logging.getLogger("fspad_hf")

@dataclass
class TargetArguments:
    target: str = field(default="smollm2", metadata={"help": "Registered target (smollm2, qwen-coder-0.5b, gemma3-270m) or a local model path."})
    target_dtype: str = field(default="float32", metadata={"help": "Target dtype: float32 or bfloat16."})


@dataclass
class DataArguments:
    data: str | None = field(default=None, metadata={"help": "Chat data (ShareGPT or OpenAI messages; .json/.jsonl); comma-separated "
                             "sources are concatenated, each optionally `SOURCE:N` (first N) or `SOURCE:A-B`; `sharegpt` = the packaged ShareGPT V3 "
                             "(the default), `chitchat` = the packaged chitchat-dataset's casual human chats."})
    max_conversations: int | None = field(default=None, metadata={"help": "Read at most this many conversations."})
    max_turns: int | None = field(default=None, metadata={"help": "Keep only the first N user turns of each conversation."})
    max_length: int = field(default=1024, metadata={"help": "Truncate tokenised conversations to this many tokens."})
    eval_fraction: float = field(default=0.02, metadata={"help": "Fraction of conversations held out for evaluation."})
    features_dir: str | None = field(default=None, metadata={
        "help": "Offline features from `fspad-hf prepare --features` (default: online); comma-separate several directories."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/eval split."})
    all_turns: bool = field(default=False, metadata={"help": "Learn every assistant turn: cut long conversations into "
                            "max_length windows (each assistant token a target once, with its context) instead of "
                            "keeping only the first max_length tokens."})


@dataclass
class HeadArguments:
    method: str = field(default="fspad", metadata={"help": "eagle2 | fs | pad | fspad (FS and PAD switches); a comma-separated "
                        "list (eagle2,fspad) trains one head per method on the same batches, one target forward per step "
                        "for all (output_dir/final/<method>)."})
    num_draft_layers: int = field(default=1, metadata={"help": "Draft layers; > 1 = PosS specialists."})
    positions_per_layer: int = field(default=1, metadata={"help": "PosS-N: draft positions per specialist."})
    init_from: str | None = field(default=None, metadata={
        "help": "Start from this head (fine-tune; a 1-layer head initialises all PosS specialists). A head group's "
                "folder (checkpoint or carry, with heads.json) initialises each head of --method from its own subfolder."})
    draft_vocab_size: int | None = field(default=None, metadata={"help": "Reduced draft vocabulary: the N most frequent assistant tokens."})
    tree_total_tokens: int | None = field(default=None, metadata={"help": "Default tree size stored in the head config."})
    tree_depth: int | None = field(default=None, metadata={"help": "Default tree depth stored in the head config."})
    tree_top_k: int | None = field(default=None, metadata={"help": "Default tree top-k stored in the head config."})
    lora_r: int = field(default=0, metadata={"help": "> 0: fine-tune `init_from` with LoRA adapters of this rank (peft)."})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj,fc", metadata={"help": "Comma-separated module names for LoRA."})
    init_layers_from_target: bool = field(default=False, metadata={
        "help": "Initialise every draft layer as a copy of the target's last decoder layer (attention, MLP, "
                "post-attention norm; PAD's 2H down_proj gets the target's down_proj in both halves) instead of random."})
    feature_noise: float | None = field(default=None, metadata={
        "help": "Training input-feature noise amplitude stored in the head config (0 = off; default: the config's 0.2)."})
    continue_from: str | None = field(default=None, metadata={
        "help": "A carry folder (`fspad-hf carry`) of this run made on another machine: training continues at its "
                "step and data position, with a fresh optimizer and a new LR warm-up (unless output_dir is further)."})


@dataclass
class PrepareArguments:
    output_dir: str = field(default="runs/data", metadata={"help": "Where distilled.jsonl and features/ are written."})
    regenerate: bool = field(default=False, metadata={"help": "Self-distillation: regenerate assistant turns with the target."})
    max_new_tokens: int = field(default=256, metadata={"help": "Self-distillation: max tokens per regenerated answer."})
    batch_size: int = field(default=8, metadata={"help": "Self-distillation batch size."})
    do_sample: bool = field(default=False, metadata={"help": "Self-distillation: sample instead of greedy."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Self-distillation: skip prompts longer than this."})
    features: bool = field(default=False, metadata={"help": "Precompute offline target features (safetensors shards)."})
    features_dtype: str = field(default="bfloat16", metadata={
        "help": "Storage dtype of offline features: bfloat16, float16, float32, or int8 (one scale per token, ~half of bf16)."})
    shard_size: int = field(default=256, metadata={"help": "Examples per feature shard."})


def _parse(dataclasses, argv):
    parser = HfArgumentParser(dataclasses)
    return parser.parse_args_into_dataclasses(args=argv)


def _load_target(targs: TargetArguments):
    from .targets import load_target

    return load_target(targs.target, dtype=targs.target_dtype)


def _conversations(dargs: DataArguments):
    from .training.data import load_chitchat, load_conversations

    convs = []
    for source in (dargs.data or "sharegpt").split(","):
        path, start, stop = _source_range(source, dargs.max_conversations)
        if path == "chitchat":  # the PyPI package chitchat-dataset (casual human chats)
            got, stats = load_chitchat(max_conversations=stop)
        else:
            got, stats = load_conversations(None if path == "sharegpt" else path, max_conversations=stop)
        if not got[start:]:
            raise SystemExit(f"No usable conversations in {source} ({stats.summary()}).")
        convs.extend(got[start:])
    if dargs.max_turns:
        convs = [_first_turns(c, dargs.max_turns) for c in convs]
    return convs


def _source_range(source: str, default_limit: int | None) -> tuple[str, int, int | None]:
    """`path`, `path:N` (first N) or `path:A-B` (conversations A..B-1) -> (path, start, stop)."""
    path, _, spec = source.rpartition(":")
    if not path or not spec.replace("-", "").isdigit():
        return source, 0, default_limit
    if "-" in spec:
        start, stop = (int(x) for x in spec.split("-", 1))
        return path, start, stop
    return path, 0, int(spec)


def _first_turns(messages: list[dict], n: int) -> list[dict]:
    out, users = [], 0
    for m in messages:
        if m["role"] == "user":
            users += 1
            if users > n:
                break
        out.append(m)
    return out


def _tokenize(tokenizer, convs, max_length: int, all_turns: bool = False) -> list[dict]:
    from tqdm.auto import tqdm

    from .training.chat_masks import conversation_windows, tokenize_conversation

    progress = tqdm(convs, desc="tokenise", mininterval=5)
    if all_turns:  # whole conversations, cut into windows: later turns are learned too
        examples = [w for c in progress for w in conversation_windows(tokenize_conversation(tokenizer, c, 1 << 30), max_length)]
    else:
        examples = [tokenize_conversation(tokenizer, c, max_length) for c in progress]
    kept = [e for e in examples if sum(e["loss_mask"]) > 0]
    if not kept:
        raise SystemExit("No example has an assistant token after tokenisation: check the chat template and max_length.")
    return kept


# ------------------------------------------------------------------------------------ prepare
def cmd_prepare(argv: list[str]) -> None:
    """Chat data -> (optional) self-distilled JSONL -> (optional) offline feature shards."""
    targs, dargs, pargs = _parse((TargetArguments, DataArguments, PrepareArguments), argv)
    from .training.features import STORAGE_DTYPE_NAMES as names

    if pargs.features and pargs.features_dtype not in names:  # before hours of self-distillation, not after
        raise SystemExit(f"--features_dtype must be one of {', '.join(names)}, got {pargs.features_dtype!r}.")
    out = Path(pargs.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target, tokenizer = _load_target(targs)
    convs = _conversations(dargs)
    logger.info("%d conversations loaded", len(convs))
    if pargs.regenerate:
        from .training.distill import regenerate_conversations

        path = regenerate_conversations(target, tokenizer, convs, out / "distilled.jsonl", max_new_tokens=pargs.max_new_tokens,
                                        batch_size=pargs.batch_size, do_sample=pargs.do_sample,
                                        max_prompt_tokens=pargs.max_prompt_tokens)
        dargs.data, dargs.max_conversations, dargs.max_turns = str(path), None, None
        convs = _conversations(dargs)
    if pargs.features:
        from .training.features import extract_features

        examples = _tokenize(tokenizer, convs, dargs.max_length, dargs.all_turns)
        extract_features(target, examples, out / "features", shard_size=pargs.shard_size,
                         dtype=getattr(torch, pargs.features_dtype))
    logger.info("prepare done: %s", out)


# ------------------------------------------------------------------------------------ train
def _init_path(init_from: str, method: str) -> str:
    """--init_from for one head: a head folder as given, or, for a head group's folder (a group checkpoint or
    carry, with heads.json), the subfolder of the head of this `method`: a group continues head by head."""
    import json

    from .training.checkpoints import GROUP_MANIFEST_NAME

    manifest = Path(init_from) / GROUP_MANIFEST_NAME
    if not manifest.is_file():
        return init_from
    names = json.loads(manifest.read_text())["heads"]
    if method not in names:
        raise SystemExit(f"--init_from {init_from} is a head group of {names}: it has no '{method}' head. Pass one "
                         f"head's folder ({init_from}/<head>) or train --method with the group's heads.")
    return str(Path(init_from) / method)


def _build_head(target, tokenizer, hargs: HeadArguments, method: str | None = None):
    from .head.modeling import FSPADDraftModel
    from .training.trainer import init_from_head

    from .decoding.settings import KEYWORDS
    from .head.configuration import METHODS

    method = method or hargs.method
    if method not in METHODS:
        raise SystemExit(f"--method must be one of {sorted(METHODS)} (or a comma-separated list of them), got {method!r}.")
    fs, pad = METHODS[method].feature_sampling, METHODS[method].partial_alignment
    tree = {kw: v for kw in KEYWORDS if (v := getattr(hargs, kw)) is not None}
    if hargs.init_from and hargs.init_layers_from_target:
        raise SystemExit("--init_from and --init_layers_from_target both initialise the draft layers: pick one.")
    noise = {} if hargs.feature_noise is None else {"feature_noise": hargs.feature_noise}
    init_from = _init_path(hargs.init_from, method) if hargs.init_from else None
    if init_from and hargs.lora_r > 0:
        head = FSPADDraftModel.from_pretrained(init_from).to(target.device)
        head.bind_target(target, tokenizer)
        if noise:
            head.config.feature_noise = float(hargs.feature_noise)
        return head
    head = FSPADDraftModel.from_target(target, tokenizer, feature_sampling=fs, partial_alignment=pad,
                                       num_draft_layers=hargs.num_draft_layers, positions_per_layer=hargs.positions_per_layer,
                                       draft_vocab_size=hargs.draft_vocab_size, **noise, **tree)
    if init_from:
        init_from_head(head, FSPADDraftModel.from_pretrained(init_from))
    if hargs.init_layers_from_target:
        from .head.init import init_layers_from_target

        init_layers_from_target(head, target)
    return head


def cmd_train(argv: list[str]) -> None:
    """Train (or fine-tune) a draft head with FSPADTrainer; every TrainingArguments option applies."""
    from .training.data import ChatDataset
    from .training.features import feature_tokens, load_feature_sets
    from .training.trainer import FSPADTrainer, FSPADTrainingArguments, select_draft_vocab

    targs, dargs, hargs, args = _parse((TargetArguments, DataArguments, HeadArguments, FSPADTrainingArguments), argv)
    target, tokenizer = _load_target(targs)
    if dargs.features_dir:
        dataset = load_feature_sets(dargs.features_dir, target)  # checked against this target
        examples = None
    else:
        examples = _tokenize(tokenizer, _conversations(dargs), dargs.max_length, dargs.all_turns)
        random.Random(dargs.split_seed).shuffle(examples)
        dataset = ChatDataset(examples)
    order = list(range(len(dataset)))
    if examples is None:  # feature shards keep the data order: draw the eval split at random (chat data is shuffled above)
        random.Random(dargs.split_seed).shuffle(order)
    n_eval = int(len(dataset) * dargs.eval_fraction)
    train_set = torch.utils.data.Subset(dataset, order[n_eval:])
    eval_set = torch.utils.data.Subset(dataset, order[:n_eval]) if n_eval else None
    methods = hargs.method.split(",")
    if len(set(methods)) != len(methods):
        raise SystemExit(f"--method lists a method twice: {hargs.method!r}.")
    if len(methods) > 1 and hargs.lora_r > 0:
        raise SystemExit("--lora_r fine-tunes one head (--init_from); train a head group (--method a,b) without LoRA.")
    heads = {m: _build_head(target, tokenizer, hargs, m) for m in methods}
    if hargs.draft_vocab_size and not hargs.init_from:
        # counted on the training split only; feature sets are read without their hidden states
        train_ids = order[n_eval:]
        source = [examples[i] for i in train_ids] if examples is not None else feature_tokens(dataset, train_ids)
        ids = select_draft_vocab(source, hargs.draft_vocab_size, next(iter(heads.values())).config.vocab_size)
        for head in heads.values():
            head.set_draft_vocab(ids)
    models = dict(heads)
    if hargs.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        models = {m: get_peft_model(h, LoraConfig(r=hargs.lora_r, lora_alpha=2 * hargs.lora_r,
                                                  target_modules=hargs.lora_target_modules.split(",")))
                  for m, h in heads.items()}
    logger.info("training %s (%d trainable parameters) on %d examples",
                " + ".join(f"{h.config.method_name} head" for h in heads.values()),
                sum(p.numel() for m in models.values() for p in m.parameters() if p.requires_grad), len(train_set))
    model = models if len(models) > 1 else next(iter(models.values()))
    trainer = FSPADTrainer(model=model, args=args, target=target, train_dataset=train_set, eval_dataset=eval_set)
    from .training.checkpoints import last_complete_checkpoint, restore_carry
    from .training.trainer import finish_distributed

    last = args.resume_from_checkpoint
    if last is None and hargs.continue_from:  # another machine's run: its carry becomes checkpoint-N here
        last = str(restore_carry(hargs.continue_from, args.output_dir))
    if last is None:  # a killed run resumes from its last complete checkpoint
        found = last_complete_checkpoint(args.output_dir)
        last = str(found) if found else None
    if last:
        logger.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    if trainer.stopped_by_signal:  # stopped to go (a session ends): no "final" heads of a half run, no evaluation
        logger.warning("stopped by a signal at step %d: checkpoint-%d saved; `train` again resumes from it",
                       trainer.state.global_step, trainer.state.global_step)
        finish_distributed()
        return
    final = Path(args.output_dir) / "final"
    if trainer.is_world_process_zero():  # one writer per file
        for m, member in models.items():
            folder = final / m if len(models) > 1 else final
            (member.merge_and_unload() if hargs.lora_r > 0 else member).save_pretrained(folder)
        logger.info("saved the trained head%s to %s", "s" if len(models) > 1 else "", final)
    if eval_set is not None:  # every rank takes part in a distributed evaluation
        trainer.evaluate()
    finish_distributed()


# ------------------------------------------------------------------------------------ bench / demo
def cmd_bench(argv: list[str]) -> None:
    """Benchmark methods on Spec-Bench questions; writes JSON, a Markdown table and plots."""
    from .evaluation.bench_cli import cmd_bench as bench

    bench(argv)


def cmd_demo(argv: list[str]) -> None:
    """Answer a prompt with the shipped FSPAD head (streamed), compare with plain generate(), explain the result."""
    import argparse

    from .evaluation.demo import DTYPES, run_demo

    p = argparse.ArgumentParser(prog="fspad-hf demo", description=cmd_demo.__doc__)
    p.add_argument("--target", default="smollm2")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="auto: a short probe picks the dtype where the head is fastest on this machine")
    p.add_argument("--head", default=None, help="head folder or shipped name (default: the target's shipped FSPAD head)")
    p.add_argument("--prompt", default="Write a short explanation of how a hash map works, with a Python example.")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores free of other work now)")
    a = p.parse_args(argv)
    run_demo(a.target, a.head, a.prompt, a.max_new_tokens, a.dtype, a.threads)


def cmd_push(argv: list[str]) -> None:
    """Publish a head repo (card, weights, custom_generate/), or write it locally with --dry_run."""
    from .sharing.hub import cmd_push as push

    push(argv)


def cmd_calibrate(argv: list[str]) -> None:
    """Measure (or load the cached) cost table of this machine: target forwards over k tokens, draft levels."""
    import argparse

    from .decoding.cost_model import DEFAULT_CONTEXTS, DEFAULT_KS, DEFAULT_WIDTHS, CostModel
    from .machine import default_threads

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(","))

    p = argparse.ArgumentParser(prog="fspad-hf calibrate", description=cmd_calibrate.__doc__)
    p.add_argument("--target", default="smollm2", help="smollm2, qwen-coder-0.5b, gemma3-270m, or a model path")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--head", default=None, help="head folder or shipped name (e.g. smollm2-fspad): adds draft-level costs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores free of other work now)")
    p.add_argument("--force", action="store_true", help="recalibrate even if a fresh cached table exists")
    p.add_argument("--max_age_days", type=float, default=7.0, help="older cached tables are recalibrated")
    p.add_argument("--ks", type=ints, default=None, help=f"k grid (default {','.join(map(str, DEFAULT_KS))})")
    p.add_argument("--widths", type=ints, default=None, help=f"draft width grid (default {','.join(map(str, DEFAULT_WIDTHS))})")
    p.add_argument("--contexts", type=ints, default=None, help=f"context lengths (default {','.join(map(str, DEFAULT_CONTEXTS))})")
    p.add_argument("--reps", type=int, default=None, help="repetitions per point (median; default 3)")
    p.add_argument("--max_seconds", type=float, default=None, help="soft time budget of one table (default 30 s target, 10 s head)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads or default_threads())
    target, tokenizer = _load_target(TargetArguments(a.target, a.dtype))
    head = None
    if a.head:
        from .head.modeling import FSPADDraftModel

        head = FSPADDraftModel.from_pretrained(a.head).to(device=target.device, dtype=target.dtype)
        head.bind_target(target, tokenizer)
    options = {n: v for n in ("ks", "widths", "contexts", "reps", "max_seconds") if (v := getattr(a, n)) is not None}
    costs = CostModel.for_target(target, head, max_age_days=a.max_age_days, force=a.force, **options)
    print(f"## {a.target}, {a.dtype}, {torch.get_num_threads()} thread(s)\n")
    print(costs.to_markdown())
    print("\ncached in: " + ", ".join(str(path) for path in costs.paths.values()))


def cmd_convert(argv: list[str]) -> None:
    """Convert a head from another project's layout (EAGLE-1/2: SafeAILab/EAGLE; EAGLE-3: SafeAILab/EAGLE,
    SpecForge / SGLang, speculators) into a normal head folder."""
    import argparse

    from .interop import load_eagle, load_eagle3

    p = argparse.ArgumentParser(prog="fspad-hf convert", description=cmd_convert.__doc__)
    p.add_argument("--from", dest="source_format", required=True, choices=["eagle", "eagle3"],
                   help="layout of SRC (eagle: EAGLE-1/2; eagle3: EAGLE-3, SpecForge or speculators)")
    p.add_argument("source", metavar="SRC", help="EAGLE head folder (config.json + model.safetensors or pytorch_model.bin) or Hub repo id")
    p.add_argument("--feature-layers", default=None,
                   help="eagle3: the three target layers the head reads, e.g. 1,15,28 (default: the config's, else the "
                        "EAGLE-3 default for --target)")
    p.add_argument("--output", required=True, help="folder to write (config.json + model.safetensors, via save_pretrained)")
    p.add_argument("--target", default=None, help="optional target (registered name, path or Hub id): checks sizes, records it")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype of the written head")
    a = p.parse_args(argv)
    target_dtype = a.dtype if a.dtype in ("float32", "bfloat16") else "float32"
    target = _load_target(TargetArguments(a.target, target_dtype))[0] if a.target else None
    if a.source_format == "eagle3":
        layers = [int(i) for i in a.feature_layers.split(",")] if a.feature_layers else None
        head = load_eagle3(a.source, target=target, target_feature_layers=layers, dtype=getattr(torch, a.dtype))
    elif a.feature_layers:
        raise SystemExit("--feature-layers is for EAGLE-3 heads (--from eagle3); EAGLE-1/2 heads read the final feature.")
    else:
        head = load_eagle(a.source, target=target, dtype=getattr(torch, a.dtype))
    head.save_pretrained(a.output)
    print(f"wrote {head.config.method_name} head to {a.output}")


def cmd_carry(argv: list[str]) -> None:
    """A training checkpoint -> a small carry folder another machine continues from (`train --continue_from`)."""
    import argparse

    from .training.checkpoints import save_carry

    p = argparse.ArgumentParser(prog="fspad-hf carry", description=cmd_carry.__doc__)
    p.add_argument("--checkpoint", required=True, help="a complete checkpoint-N folder of `fspad-hf train`")
    p.add_argument("--output", required=True, help="the carry folder to write (int8 heads + trainer state, no optimizer)")
    a = p.parse_args(argv)
    try:
        logger.info("wrote %s", save_carry(a.checkpoint, a.output))
    except ValueError as error:
        raise SystemExit(str(error)) from error


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "carry": cmd_carry, "bench": cmd_bench, "demo": cmd_demo, "push": cmd_push, "calibrate": cmd_calibrate, "convert": cmd_convert}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("\ncommands:", ", ".join(sorted(COMMANDS)))
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    if "OMP_NUM_THREADS" not in os.environ:  # commands with --threads set it again themselves
        from .machine import default_threads

        torch.set_num_threads(default_threads())  # busy cores stall every op of a multi-threaded torch
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
