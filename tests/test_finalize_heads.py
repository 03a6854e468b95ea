"""scripts/finalize_heads.py: a shipped head's card reads the right numbers from its checkpoint."""

import json

import pytest

from scripts.finalize_heads import checkpoint_metrics


def _state(folder, log_history, step=1200):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 4,
                                                           "log_history": log_history}))


def test_single_head_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint-1200"
    _state(ckpt, [{"loss": 3.0, "learning_rate": 5e-4, "step": 50},
                  {"eval_acc_p1": 0.61, "eval_acc_p2": 0.4, "step": 1000},
                  {"loss": 2.5, "learning_rate": 1e-4, "step": 1200}])
    m = checkpoint_metrics(ckpt)
    assert not m["in_group"] and m["max_steps"] == 1200 and m["batch_size"] == 4
    assert m["learning_rate"] == 5e-4 and m["train_loss"] == 2.5
    assert m["eval_top1_per_position"] == [0.61, 0.4]


def test_head_of_a_group_reads_its_own_metrics(tmp_path):
    group = tmp_path / "checkpoint-12000"
    # a group's "loss" is the sum over its heads; each head logs its terms under its name
    _state(group, [{"loss": 7.0, "learning_rate": 5e-4, "fspad_feature_loss_p1": 0.9, "fspad_logit_loss_p1": 2.1,
                    "eagle2_feature_loss_p1": 1.0, "eagle2_logit_loss_p1": 2.4, "step": 11950},
                   # positions beyond 9 sort by number, not as strings
                   {**{f"eval_fspad_acc_p{i}": round(1 / i, 4) for i in range(1, 11)},
                    "eval_eagle2_acc_p1": 0.55, "step": 12000},
                   {"loss": 6.0, "learning_rate": 0.0, "step": 12000}], step=12000)
    (group / "heads.json").write_text(json.dumps({"heads": ["eagle2", "fspad"]}))
    (group / "fspad").mkdir()
    m = checkpoint_metrics(group / "fspad")
    assert m["in_group"] and m["max_steps"] == 12000
    assert m["train_loss"] == "feature 0.900, logit 2.100 (position 1)"  # not the group's summed loss
    assert m["eval_top1_per_position"] == [round(1 / i, 4) for i in range(1, 11)]
    assert checkpoint_metrics(group / "eagle2")["eval_top1_per_position"] == [0.55]


def test_not_a_checkpoint_names_the_fix(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(SystemExit, match="not a training checkpoint"):
        checkpoint_metrics(tmp_path / "weights")


def test_card_only_rebuilds_the_card_and_leaves_the_weights(tmp_path, monkeypatch):
    """--card_only: a template change reaches a shipped head's card without re-exporting its weights."""
    import sys

    from fspad_hf import FSPADDraftModel
    from fspad_hf.head.storage import save_int8
    from scripts import finalize_heads
    from tests.conftest import make_target

    heads = tmp_path / "heads"
    monkeypatch.setattr(finalize_heads, "heads_dir", lambda: heads)
    ckpt = tmp_path / "checkpoint-1200"
    _state(ckpt, [{"loss": 2.5, "learning_rate": 5e-4, "step": 1200}])
    argv = ["finalize_heads.py", "--checkpoint", str(ckpt), "--name", "tiny", "--card_only",
            "--benchmark_note", "Acceptance run, not a speed run."]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no shipped head"):
        finalize_heads.main()

    save_int8(FSPADDraftModel.from_target(make_target("llama")), heads / "tiny")
    weights = {p.name: p.read_bytes() for p in (heads / "tiny").iterdir()}
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"config": {"dtype": "float32", "heads": ["fspad=x@8,3,4"]},
                                 "methods": {"fspad": {"overall": {"tau": 2.2, "speedup": 0.9, "tokens_per_s": 6.0}}}}))
    monkeypatch.setattr(sys, "argv", argv + ["--benchmark", str(bench)])
    finalize_heads.main()
    card = (heads / "tiny" / "README.md").read_text()
    assert "Acceptance run, not a speed run." in card and "fspad static (8 tokens, depth 3, top-k 4)" in card
    assert "stored as int8" in card  # what ships is read from the folder, not from --int8
    assert {p.name: p.read_bytes() for p in (heads / "tiny").iterdir() if p.name != "README.md"} == weights
