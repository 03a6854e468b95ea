"""Sharing heads: model card, repo folder, dry-run and intercepted push, custom_generate without the package."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from safetensors import safe_open
from transformers.generation.streamers import BaseStreamer

from fspad_hf import FSPADDraftModel
from fspad_hf.sharing import standalone, vendoring
from fspad_hf.sharing.hub import EXPECTED_FILES, build_model_card, cmd_push, push_head, push_parser, save_head_repo
from fspad_hf.sharing.standalone import CARD_TEMPLATE_NAME, card_template_path, check_standalone
from fspad_hf.sharing.vendoring import VendoringError
from tests.conftest import make_target

REPO = "someone/tiny-llama-fspad"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
BENCH = {
    "config": {"target": "smollm2", "dtype": "bfloat16", "machine": "Linux-test", "threads": 2, "questions": 4,
               "max_new_tokens": 64, "temperature": 0.0},
    "methods": {
        "baseline": {"overall": {"tau": 1.0, "speedup": 1.0, "tokens_per_s": 10.0, "identical_to_baseline": True},
                     "per_category": {"coding": {"tau": 1.0, "speedup": 1.0}, "qa": {"tau": 1.0, "speedup": 1.0}}},
        "fspad": {"overall": {"tau": 2.47, "speedup": 1.83, "tokens_per_s": 18.3, "identical_to_baseline": False,
                              "identical_turns": 7},
                  "per_category": {"coding": {"tau": 2.9, "speedup": 2.11}, "qa": {"tau": 2.0, "speedup": 1.5}}},
    },
}
TRAINING = {"data": "ShareGPT V3, self-distilled by the target", "datasets": ["anon8231489123/ShareGPT_Vicuna_unfiltered"],
            "max_steps": 300, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
            "tokens": 123456}


@pytest.fixture(scope="module")
def target():
    model = make_target("llama", seed=3)
    model.name_or_path = SMOLLM2  # a registered target: its license is known
    return model


@pytest.fixture(scope="module")
def head(target):
    torch.manual_seed(0)
    return FSPADDraftModel.from_target(target, tree_total_tokens=12, tree_depth=4, tree_top_k=4)


@pytest.fixture(scope="module")
def repo(head, tmp_path_factory):
    folder = tmp_path_factory.mktemp("repo") / "head"
    result = push_head(head, REPO, dry_run_dir=folder, training_args=TRAINING, benchmark=BENCH)
    assert result.dry_run and result.folder == folder
    return folder


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def prompt(seed=0, length=9):
    return torch.randint(0, 96, (1, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- repo content
def test_dry_run_writes_exactly_the_repo_files(repo):
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert files == sorted(EXPECTED_FILES)


def test_card_metadata_and_sections(repo):
    text = (repo / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == SMOLLM2
    assert meta["library_name"] == "fspad-hf"
    assert meta["license"] == "apache-2.0"
    assert {"speculative-decoding", "draft-model", "fspad", "custom_generate"} <= set(meta["tags"])
    assert meta["datasets"] == TRAINING["datasets"]
    assert ModelCard(text).data.base_model == SMOLLM2  # huggingface_hub parses it too
    for needle in ("## What the head is", "FSPAD", "tree_total_tokens=12", "assistant_model=head",
                   f'custom_generate="{REPO}", trust_remote_code=True', "## Training", "| steps | 300 |",
                   "16 (8 per device x 2 accumulation", "123,456", "| fspad | 2.47 | 1.83x | 18.3 | no (7 turns identical) |",
                   "| coding | 1.00x (1.00) | 2.11x (2.90) |", "bfloat16", "machine: Linux-test", "## Limitations",
                   "Batch size 1", "near-ties"):
        assert needle in text, needle


def test_config_carries_the_target_record(repo, target):
    cfg = json.loads((repo / "config.json").read_text())
    assert cfg["model_type"] == "fspad"
    assert cfg["target_name_or_path"] == SMOLLM2
    assert cfg["target_architecture"] == "LlamaForCausalLM"
    assert cfg["target_config"]["model_type"] == "llama"
    assert cfg["target_config"]["hidden_size"] == target.config.hidden_size
    assert cfg["tree_total_tokens"] == 12


def test_weights_exclude_the_target_embedding_and_lm_head(repo, head):
    with safe_open(str(repo / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        saved = {k: f.get_tensor(k) for k in keys}
    assert not any("embed_tokens" in k or "lm_head" in k for k in keys)
    state = {k: v for k, v in head.state_dict().items() if k in keys}
    assert keys == set(state) and all(torch.equal(saved[k], state[k]) for k in keys)


def test_custom_generate_files_are_standalone(repo):
    source = (repo / "custom_generate" / "generate.py").read_text()
    check_standalone(source)
    tree = ast.parse(source)
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"generate", "tree_generate", "FSPADDraftModel", "FSPADConfig"} <= names
    assert f"DEFAULT_DRAFT_MODEL: str | None = {REPO!r}" in source
    reqs = (repo / "custom_generate" / "requirements.txt").read_text().split()
    assert any(r.startswith("transformers>=") for r in reqs) and any(r.startswith("torch") for r in reqs)
    with pytest.raises(VendoringError):
        check_standalone("import fspad_hf\n")


LEFT_OUT_OF_STANDALONE = ("draft_objective", "FSPADTrainer", "load_int8", "check_head_folder", "resolve_shipped",
                          "ModelCard", "SuffixIndex", "merge_retrieved")  # retrieval drafting needs the package


def test_custom_generate_holds_only_what_decoding_needs(repo):
    source = (repo / "custom_generate" / "generate.py").read_text()
    # issue 14 aimed at 1,200 lines; retrieval and adaptive-policy settings, head-free checks and the tau
    # definition brought it to ~1,255 (their code itself is left out), transformers 5.25's kernels switch
    # (compat.load_kwargs) to ~1,305: the bound catches a regression
    assert len(source.splitlines()) < 1320
    for needle in LEFT_OUT_OF_STANDALONE:
        assert needle not in source, needle
    tree = ast.parse(source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods = {m.name for m in classes["FSPADDraftModel"].body if isinstance(m, ast.FunctionDef)}
    assert {"draft_step", "bind_target", "_init_weights"} & methods == {"draft_step", "bind_target"}  # base class
    assert not {"from_pretrained", "from_target", "set_draft_vocab", "forward"} & methods  # `# standalone: omit`
    assert "_safetensors_from_pretrained" in source  # the entry point's safetensors-only loader stands in
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not {"route", "install", "unwrap_head", "FSPADOutput", "METHODS", "DraftingHead"} & names  # unreachable
    vendored = source[: source.index("# (vendored fspad_hf modules above)")]
    docstrings = [n for n in ast.walk(ast.parse(vendored)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                  and ast.get_docstring(n) is not None]
    assert not docstrings, [n.name for n in docstrings]


PKG = {  # a miniature fspad_hf for the builder: nested folders, a marker, unreachable code
    "low.py": "CONST = 3\n",
    "decoding/util.py": "def helper(head, const):\n    return head.run(), const\n",
    "decoding/generation.py": (
        '"""Module doc."""\n\nfrom __future__ import annotations\n\nimport os\n\nfrom ..head.model import Head\n'
        "from .util import helper\nfrom ..low import CONST\n\n\n"
        'def tree_generate(model):\n    """Function doc."""\n    # invariant: kept\n    return helper(Head(), CONST)\n\n\n'
        "def unused():\n    return os.getcwd()\n"
    ),
    "head/model.py": (
        "import json\n\nfrom .loading import load_head\n\n\nclass Head:\n    def run(self):\n        return 1\n\n"
        "    # standalone: omit\n    @classmethod\n    def from_pretrained(cls, source):\n"
        "        return load_head(cls, json.loads(source))\n"
    ),
    "head/loading.py": "def load_head(cls, source):\n    from .storage import load_int8\n\n    return load_int8(source)\n",
    "sharing/entry.py": (
        '"""Entry doc."""\n\nfrom __future__ import annotations\n\n# fspad-hf: vendored-begin\n'
        "from fspad_hf.decoding.generation import tree_generate\nfrom fspad_hf.head.model import Head\n"
        "# fspad-hf: vendored-end\n\nDEFAULT_DRAFT_MODEL: str | None = None  # fspad-hf: default-draft-model\n\n\n"
        "def generate(model):\n    return tree_generate(model), Head\n"
    ),
}


def build_mini(tmp_path, monkeypatch, **changes):
    root = tmp_path / "pkg"
    for rel, text in {**PKG, **changes}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(vendoring, "PACKAGE_DIR", root)
    monkeypatch.setattr(standalone, "ENTRY_FILE", root / "sharing" / "entry.py")
    return standalone.build_generate_py(default_draft_model="me/head")


def test_builder_follows_nested_folders_and_prunes(tmp_path, monkeypatch):
    text = build_mini(tmp_path, monkeypatch)
    namespace = {}
    exec(compile(text, "generate.py", "exec"), namespace)
    assert namespace["generate"](None)[0] == (1, 3) and namespace["DEFAULT_DRAFT_MODEL"] == "me/head"
    assert "from_pretrained" not in vars(namespace["Head"])
    for absent in ("load_head", "unused", "import json", "import os", "Module doc", "Function doc", "fspad_hf.", "from ."):
        assert absent not in text.split('"""', 2)[2], absent
    assert "# invariant: kept" in text
    sections = [line.split()[-1] for line in text.splitlines() if line.startswith("# ------------------------------ ")]
    assert sections == ["fspad_hf/head/model.py", "fspad_hf/decoding/util.py", "fspad_hf/low.py",
                        "fspad_hf/decoding/generation.py"]
    assert standalone.vendored_module_names() == ["head.model", "decoding.util", "low", "decoding.generation"]


def test_builder_refuses_unsafe_merges(tmp_path, monkeypatch):
    with pytest.raises(VendoringError, match="defined differently"):
        build_mini(tmp_path / "a", monkeypatch, **{"decoding/util.py": "CONST = 4\n\n\ndef helper(head, const):\n"
                                                                   "    return head.run(), CONST\n"})
    omitted = "# standalone: omit\n" + PKG["decoding/util.py"]
    with pytest.raises(VendoringError, match="stand-in `helper`"):
        build_mini(tmp_path / "b", monkeypatch, **{"decoding/util.py": omitted})
    stand_in = PKG["sharing/entry.py"] + "\n\ndef helper(head, const):\n    return 0, const\n"
    text = build_mini(tmp_path / "c", monkeypatch, **{"decoding/util.py": omitted, "sharing/entry.py": stand_in})
    namespace = {}
    exec(compile(text, "generate.py", "exec"), namespace)
    assert namespace["generate"](None)[0] == (0, 3)
    nested = PKG["head/model.py"].replace("    # standalone: omit\n", "")
    with pytest.raises(VendoringError, match="inside a definition"):
        build_mini(tmp_path / "d", monkeypatch, **{"head/model.py": nested})


def test_from_pretrained_round_trip(repo, head, target):
    loaded = FSPADDraftModel.from_pretrained(repo)
    assert loaded.config.method_name == "FSPAD" and loaded.config.target_name_or_path == SMOLLM2
    reference = head.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    ids = prompt()
    plain = target.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(target.generate(ids, assistant_model=loaded, max_new_tokens=20, do_sample=False), plain)


# ---------------------------------------------------------------------------- push (intercepted)
def test_push_uploads_the_repo_folder(head, no_network, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        calls.append(("upload_folder", repo_id, kwargs, files))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = push_head(head, REPO, private=True, token="hf_fake", benchmark=BENCH, commit_message="add head")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == REPO and calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    _, repo_id, kwargs, files = calls[1]
    assert repo_id == REPO and kwargs["commit_message"] == "add head"
    assert sorted(files) == sorted(EXPECTED_FILES) == result.files
    meta = front_matter(files["README.md"].decode())
    assert meta["base_model"] == SMOLLM2 and meta["license"] == "apache-2.0"
    assert json.loads(files["config.json"])["target_name_or_path"] == SMOLLM2
    assert f"DEFAULT_DRAFT_MODEL: str | None = {REPO!r}".encode() in files["custom_generate/generate.py"]
    assert result.commit_url.endswith("/commit/abc") and not result.dry_run


def test_cmd_push_dry_run(head, tmp_path, capsys, no_network):
    head.save_pretrained(tmp_path / "trained")
    (tmp_path / "results.json").write_text(json.dumps(BENCH))
    (tmp_path / "training.json").write_text(json.dumps(TRAINING))
    cmd_push(["--head", str(tmp_path / "trained"), "--repo_id", REPO, "--benchmark", str(tmp_path / "results.json"),
              "--training_args", str(tmp_path / "training.json"), "--dry_run", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "dry run, nothing uploaded" in out and "custom_generate/generate.py" in out
    assert "| fspad | 2.47 |" in (tmp_path / "out" / "README.md").read_text()
    assert "--dry_run" in push_parser().format_help()


# ---------------------------------------------------------------------------- card variants
def test_card_variants(target, tmp_path, caplog):
    eagle = FSPADDraftModel.from_target(target, feature_sampling=False, partial_alignment=False,
                                        num_draft_layers=2, positions_per_layer=2)
    meta = build_model_card(eagle).data.to_dict()
    assert {"eagle-2", "poss"} <= set(meta["tags"]) and "fspad" not in meta["tags"]
    eagle.config.target_name_or_path = "google/gemma-3-270m"
    assert build_model_card(eagle).data.license == "gemma"
    eagle.config.target_name_or_path = str(tmp_path)  # a local path: no base_model, no known license
    card = build_model_card(eagle, benchmark=None)
    assert card.data.base_model is None and card.data.license is None
    assert "No benchmark was attached" in card.text and "No training record" in card.text
    assert build_model_card(eagle, base_model_license="mit").data.license == "mit"


def test_card_benchmark_note_and_trees(head):
    """The note says what a benchmark measured (above its tables); the setup line says how each head drafted."""
    bench = {**BENCH, "config": {**BENCH["config"], "heads": ["fspad=runs/x/checkpoint-500/fspad@8,3,4",
                                                            "poss=runs/y+adaptive", "eagle2=runs/z"]}}
    note = "Held-out acceptance run on a core shared with a training run: tokens/s are not this head's speed."
    text = build_model_card(head, benchmark=bench, benchmark_note=note).text
    section = text.split("## Benchmark", 1)[1].split("## Limitations", 1)[0]
    assert section.index(note) < section.index("| method | tau |")
    assert ("trees: fspad static (8 tokens, depth 3, top-k 4), poss adaptive (at most the head default shape), "
            "eagle2 with its own tree defaults.") in section
    assert note not in build_model_card(head, benchmark=bench).text
    with pytest.raises(ValueError, match="tree suffix"):
        build_model_card(head, benchmark={**bench, "config": {"heads": ["fspad=x@8,3"]}})


def test_card_template_has_one_source():
    canonical = Path(__file__).parent.parent / "model_cards" / CARD_TEMPLATE_NAME
    path = card_template_path()
    assert path.parent == Path(standalone.__file__).parent and path.name == CARD_TEMPLATE_NAME
    assert path.read_text() == canonical.read_text()  # the package file is a link to model_cards/ in a checkout


# ---------------------------------------------------------------------------- custom_generate
class Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.chunks.append("end")


def test_custom_generate_in_process_with_a_library_head(repo, head, target):
    """With fspad-hf installed, the repo code also takes an fspad_hf head object (copied to its own class)."""
    ids = prompt(1)
    plain = target.generate(ids, max_new_tokens=24, do_sample=False)
    streamer = Collect()
    out = target.generate(ids, custom_generate=str(repo), trust_remote_code=True, draft_model=head,
                          streamer=streamer, tree_depth=3, max_new_tokens=24, do_sample=False)
    assert torch.equal(out, plain)
    streamed = [t for chunk in streamer.chunks[:-1] for t in chunk]
    assert streamed == plain[0].tolist() and streamer.chunks[-1] == "end"
    stats = target.load_custom_generate(str(repo), trust_remote_code=True).last_generation_stats
    assert stats is not None and stats.settings.depth == 3


def test_custom_generate_needs_trust_remote_code(repo, target):
    with pytest.raises(ValueError, match="trust_remote_code"):
        target.generate(prompt(), custom_generate=str(repo), trust_remote_code=False, draft_model=str(repo),
                        max_new_tokens=4)


SCRIPT = textwrap.dedent(
    """
    import importlib.abc, os, shutil, sys

    class NoFspad(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fspad_hf" or name.startswith("fspad_hf."):
                raise ModuleNotFoundError("fspad_hf is blocked in this test")

    sys.meta_path.insert(0, NoFspad())
    try:
        import fspad_hf  # noqa: F401
        raise SystemExit("fspad_hf should not be importable here")
    except ModuleNotFoundError:
        pass
    import torch
    from transformers import AutoModelForCausalLM

    repo, target_dir = sys.argv[1], sys.argv[2]
    target = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(0))
    plain = target.generate(ids, max_new_tokens=30, do_sample=False)
    default = target.generate(ids, custom_generate=repo, trust_remote_code=True, max_new_tokens=30, do_sample=False)
    explicit = target.generate(ids, custom_generate=repo, trust_remote_code=True, draft_model=repo,
                               tree_total_tokens=8, tree_depth=3, max_new_tokens=30, do_sample=False)
    assert torch.equal(default, plain) and torch.equal(explicit, plain), (default, explicit, plain)
    pickled = os.path.join(target_dir, "..", "pickled")  # config.json + a pickle checkpoint only: refused unread
    os.makedirs(pickled)
    shutil.copy(os.path.join(repo, "config.json"), pickled)
    with open(os.path.join(pickled, "pytorch_model.bin"), "wb") as handle:
        handle.write(b"not even a pickle")
    try:
        target.generate(ids, custom_generate=repo, trust_remote_code=True, draft_model=pickled, max_new_tokens=2)
        raise SystemExit("a pickle-only head folder was loaded")
    except OSError as error:
        assert "model.safetensors" in str(error), error
    assert not any(name.startswith("fspad_hf") for name in sys.modules)
    print("CUSTOM_GENERATE_OK", plain.shape[1])
    """
)


def test_custom_generate_without_the_package(head, target, tmp_path):
    """A user without fspad-hf: transformers loads custom_generate/generate.py from the repo folder."""
    folder = save_head_repo(head, tmp_path / "repo", repo_id=str(tmp_path / "repo"))  # default weights: this folder
    target.save_pretrained(tmp_path / "target")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(tmp_path / "target")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "CUSTOM_GENERATE_OK 39" in proc.stdout


def test_head_push_to_hub_uses_the_full_repo_route(monkeypatch):
    import fspad_hf.sharing.hub as hub
    from fspad_hf import FSPADDraftModel
    from tests.conftest import make_target

    seen = {}
    monkeypatch.setattr(hub, "push_head", lambda head, repo_id, **kw: seen.update(repo_id=repo_id, **kw) or "pushed")
    head = FSPADDraftModel.from_target(make_target("llama"))
    assert head.push_to_hub("me/head", private=True) == "pushed"
    assert seen["repo_id"] == "me/head" and seen["private"] is True
