"""Head groups (several heads, one target forward per step) and carries (continuing a run on another machine)."""

import json
import os
import signal

import pytest
import torch
from transformers import TrainerCallback

from fspad_hf import FSPADDraftModel
from fspad_hf.cli import main
from fspad_hf.training.checkpoints import (checkpoint_problem, last_complete_checkpoint, read_group_manifest,
                                           restore_carry, save_carry)
from fspad_hf.training.data import ChatDataset
from fspad_hf.training.distill import greedy_continuations
from fspad_hf.training.objective import GroupObjective
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments
from tests.conftest import make_target

VOCAB = 96
METHODS = {"eagle2": dict(feature_sampling=False, partial_alignment=False),
           "fspad": dict(feature_sampling=True, partial_alignment=True)}


@pytest.fixture(scope="module")
def setup():
    target = make_target("llama", seed=41, initializer_range=0.1)
    g = torch.Generator().manual_seed(1)
    data = greedy_continuations(target, [torch.randint(0, VOCAB, (1, 6), generator=g) for _ in range(24)], 24)
    return target, data


def new_head(target, method):
    torch.manual_seed(0 if method == "eagle2" else 1)  # each method its own init, the same in every run
    return FSPADDraftModel.from_target(target, feature_noise=0.0, **METHODS[method])  # no noise: RNG streams differ


def args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=12, warmup_steps=4,
                lr_scheduler_type="constant_with_warmup", logging_steps=2, save_strategy="no", seed=0, use_cpu=True,
                disable_tqdm=True)
    base.update(kw)
    return FSPADTrainingArguments(**base)


def test_group_trains_each_head_as_its_own_run_would(setup, tmp_path):
    """Same batches, per-parameter AdamW and value clipping: the group's heads equal two separate runs."""
    target, data = setup
    solo = {}
    for method in METHODS:
        head = new_head(target, method)
        FSPADTrainer(model=head, args=args(tmp_path / method), target=target, train_dataset=ChatDataset(data)).train()
        solo[method] = head
    group = {method: new_head(target, method) for method in METHODS}
    trainer = FSPADTrainer(model=group, args=args(tmp_path / "group"), target=target, train_dataset=ChatDataset(data))
    trainer.train()
    assert isinstance(trainer.model, GroupObjective) and set(trainer.heads) == set(METHODS)
    for method in METHODS:
        for (name, p), (_, q) in zip(group[method].named_parameters(), solo[method].named_parameters()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=f"{method}.{name}")
    untrained = new_head(target, "fspad")
    assert any(not torch.allclose(p, q) for p, q in zip(group["fspad"].parameters(), untrained.parameters()))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"eagle2_acc_p1", "fspad_acc_p1", "fspad_feature_loss_p1"} <= set(logs[-1])
    with pytest.raises(AttributeError, match="several heads"):
        trainer.head


def test_group_needs_two_heads(setup):
    target, _ = setup
    with pytest.raises(ValueError, match="at least two heads"):
        FSPADTrainer(model={"fspad": new_head(target, "fspad")}, args=args("unused"), target=target)


def test_group_checkpoints_carry_and_continue(setup, tmp_path):
    target, data = setup

    def run(out, steps, **kw):
        group = {method: new_head(target, method) for method in METHODS}
        trainer = FSPADTrainer(model=group, args=args(out, max_steps=steps, save_strategy="steps", save_steps=6),
                               target=target, train_dataset=ChatDataset(data))
        trainer.train(**kw)
        return group, trainer

    run(tmp_path / "a", 6)
    ckpt = tmp_path / "a" / "checkpoint-6"
    assert read_group_manifest(ckpt) == list(METHODS) and checkpoint_problem(ckpt) is None
    assert FSPADDraftModel.from_pretrained(ckpt / "fspad").config.method_name == "FSPAD"

    carry = save_carry(ckpt, tmp_path / "carry")
    assert not list(carry.glob("**/optimizer.pt")) and (carry / "fspad" / "model.int8.safetensors").is_file()
    restored = restore_carry(carry, tmp_path / "b")  # "another machine": a fresh output_dir
    assert restored == tmp_path / "b" / "checkpoint-6" and checkpoint_problem(restored) is None
    original = FSPADDraftModel.from_pretrained(ckpt / "fspad")
    again = FSPADDraftModel.from_pretrained(restored / "fspad")
    for (name, p), (_, q) in zip(original.named_parameters(), again.named_parameters()):
        scale = p.detach().abs().amax(dim=-1, keepdim=True) / 127 if p.dim() == 2 else torch.tensor(1e-6)
        assert ((p - q).abs() <= scale / 2 + 1e-6).all(), name  # int8 rounding, nothing else

    _, trainer = run(tmp_path / "b", 12, resume_from_checkpoint=str(restored))
    assert trainer.state.global_step == 12
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h and h["step"] > 6]
    assert lrs[0] < 3e-3 and lrs[-1] == pytest.approx(3e-3)  # the fresh schedule warms up again
    assert restore_carry(carry, tmp_path / "b") == tmp_path / "b" / "checkpoint-12"  # further here: kept

    (restored / "fspad" / "model.safetensors").unlink()  # a member lost: the checkpoint is incomplete
    assert "fspad" in checkpoint_problem(restored)
    with pytest.raises(ValueError, match="not a carry folder"):
        restore_carry(ckpt, tmp_path / "c")


def test_group_resume_refuses_other_heads(setup, tmp_path):
    target, data = setup
    group = {method: new_head(target, method) for method in METHODS}
    FSPADTrainer(model=group, args=args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2), target=target,
                 train_dataset=ChatDataset(data)).train()
    other = {"fspad": new_head(target, "fspad"), "eagle2": new_head(target, "eagle2")}
    trainer = FSPADTrainer(model=other, args=args(tmp_path, max_steps=4), target=target, train_dataset=ChatDataset(data))
    with pytest.raises(ValueError, match="same --method list"):
        trainer.train(resume_from_checkpoint=str(last_complete_checkpoint(tmp_path)))


def test_cli_trains_a_pair_and_continues_from_a_carry(tmp_path):
    from tests.conftest import tiny_chat_tokenizer

    tok = tiny_chat_tokenizer()
    target = make_target("llama", seed=61, vocab_size=len(tok))
    target.generation_config.eos_token_id = tok.eos_token_id
    target.save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    rows = [{"conversations": [{"from": "human", "value": f"the quick fox {i}"}, {"from": "gpt", "value": "jumps over the dog"}]}
            for i in range(12)]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    common = ["train", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "chat.json"), "--method", "eagle2,fspad",
              "--per_device_train_batch_size", "4", "--save_steps", "2", "--use_cpu", "--eval_fraction", "0",
              "--draft_vocab_size", "32", "--disable_tqdm", "true"]
    main([*common, "--max_steps", "2", "--output_dir", str(tmp_path / "a")])
    heads = {m: FSPADDraftModel.from_pretrained(tmp_path / "a" / "final" / m) for m in ("eagle2", "fspad")}
    assert heads["eagle2"].config.method_name == "EAGLE-2" and heads["fspad"].config.method_name == "FSPAD"
    assert torch.equal(heads["eagle2"].d2t, heads["fspad"].d2t)  # one draft vocabulary for the pair
    main(["carry", "--checkpoint", str(tmp_path / "a" / "checkpoint-2"), "--output", str(tmp_path / "carry")])
    main([*common, "--max_steps", "4", "--output_dir", str(tmp_path / "b"), "--continue_from", str(tmp_path / "carry")])
    state = json.loads((tmp_path / "b" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (tmp_path / "b" / "checkpoint-2").is_dir()
    with pytest.raises(SystemExit, match="twice"):
        main(["train", "--target", str(tmp_path / "t"), "--data", str(tmp_path / "chat.json"), "--method", "fspad,fspad",
              "--output_dir", str(tmp_path / "c"), "--max_steps", "1", "--use_cpu"])


def test_init_from_a_group_initialises_each_head_from_its_own(setup, tmp_path):
    """A second phase of a pair (new data) starts each head from the pair's own head: --init_from <group>."""
    from fspad_hf.cli import HeadArguments, _build_head

    target, _ = setup
    group = tmp_path / "carry"
    saved = {m: new_head(target, m) for m in METHODS}
    for m, head in saved.items():
        head.save_pretrained(group / m)
    (group / "heads.json").write_text(json.dumps({"heads": list(METHODS)}))
    for m in METHODS:
        head = _build_head(target, None, HeadArguments(method=m, init_from=str(group)))
        for name, value in saved[m].state_dict().items():
            torch.testing.assert_close(head.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(saved["eagle2"].layers[0].self_attn.q_proj.weight, saved["fspad"].layers[0].self_attn.q_proj.weight)
    with pytest.raises(SystemExit, match="no 'fspad' head"):
        (group / "heads.json").write_text(json.dumps({"heads": ["eagle2"]}))
        _build_head(target, None, HeadArguments(method="fspad", init_from=str(group)))


class SendSignal(TrainerCallback):
    """Sends `sig` to this process at the end of step `at` (as `kill -USR1 <pid>` from a shell would)."""

    def __init__(self, sig, at):
        self.sig, self.at = sig, at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig, stops", [(signal.SIGUSR1, False), (signal.SIGTERM, True)])
def test_a_signal_checkpoints_the_current_step(setup, tmp_path, sig, stops):
    """SIGUSR1 saves checkpoint-N at the step in progress and training goes on; SIGTERM saves and stops. Without
    `save_on_signal` no handler is installed (the default SIGUSR1 action would kill the process: not tried)."""
    target, data = setup
    before = signal.getsignal(sig)
    trainer = FSPADTrainer(model={m: new_head(target, m) for m in METHODS}, target=target, train_dataset=ChatDataset(data),
                           args=args(tmp_path, save_strategy="steps", save_steps=100, save_on_signal=True),
                           callbacks=[SendSignal(sig, 5)])
    assert signal.getsignal(sig) is not before  # installed
    trainer.train()
    assert checkpoint_problem(tmp_path / "checkpoint-5") is None
    assert json.loads((tmp_path / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5
    assert trainer.state.global_step == (5 if stops else 12) and trainer.stopped_by_signal == stops
    assert last_complete_checkpoint(tmp_path).name == ("checkpoint-5" if stops else "checkpoint-12")  # 12: the end
    assert signal.getsignal(sig) == before  # put back when training ended
    plain = FSPADTrainer(model=new_head(target, "fspad"), args=args(tmp_path / "plain"), target=target,
                         train_dataset=ChatDataset(data))
    assert signal.getsignal(sig) == before and plain.args.save_on_signal is False
