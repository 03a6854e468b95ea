"""FSPADTrainer: learning, online == offline features, resume, PosS, reduced vocab, PEFT."""

import os
import subprocess
import sys

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.training.data import ChatDataset
from fspad_hf.training.distill import greedy_continuations
from fspad_hf.training.features import OfflineFeatureDataset, extract_features
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments, select_draft_vocab
from tests.conftest import make_target

VOCAB = 96


def self_generated(target, n=48, prompt_len=6, new=40, seed=0):
    """The target's own greedy text after random prompts; loss only on the generated part."""
    g = torch.Generator().manual_seed(seed)
    return greedy_continuations(target, [torch.randint(0, VOCAB, (1, prompt_len), generator=g) for _ in range(n)], new)


# Head quality is read from a fixed tree: the default adaptive tree sizes itself from measured round
# times, so its acceptance length depends on the machine's load, not only on the head.
STATIC = dict(tree_policy="static", retrieval_branches=0)


def mean_tau(target, head, examples, prompt_len=6, new=30):
    taus = []
    for ex in examples:
        target.generate(torch.tensor([ex["input_ids"][:prompt_len]]), assistant_model=head, max_new_tokens=new,
                        do_sample=False, **STATIC)
        taus.append(head.last_generation_stats.mean_accepted_length)
    return sum(taus) / len(taus)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=3e-3, max_steps=150,
                warmup_steps=10, logging_steps=25, save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True)
    base.update(kw)
    return FSPADTrainingArguments(**base)


@pytest.fixture(scope="module")
def setup():
    target = make_target("llama", seed=40, initializer_range=0.1)
    data = self_generated(target)
    return target, data[:40], data[40:]


def test_training_raises_acceptance(setup, tmp_path):
    target, train, held_out = setup
    head = FSPADDraftModel.from_target(target, tree_total_tokens=16, tree_depth=5, tree_top_k=4)
    before = mean_tau(target, head, held_out)
    trainer = FSPADTrainer(model=head, args=args(tmp_path, max_steps=300), target=target, train_dataset=ChatDataset(train))
    result = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"feature_loss_p1", "logit_loss_p1", "acc_p1"} <= set(logs[-1])
    # the soft CE has the target's entropy as floor, so compare the parts that can reach 0 / 1
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert float(logs[-1]["feature_loss_p1"]) < 0.5 * float(logs[0]["feature_loss_p1"]), logs
    assert float(logs[-1]["acc_p1"]) > float(logs[0]["acc_p1"]) + 0.2
    after = mean_tau(target, head, held_out)
    assert after > before + 0.5, (before, after)
    assert result.global_step == 300


def test_online_and_offline_features_give_same_loss(setup, tmp_path):
    target, train, _ = setup
    head = FSPADDraftModel.from_target(target).eval()
    out_dir = extract_features(target, train[:8], tmp_path / "feats", shard_size=4, dtype=torch.float32)
    offline = OfflineFeatureDataset(out_dir)
    trainer = FSPADTrainer(model=head, args=args(tmp_path), target=target, train_dataset=ChatDataset(train[:8]))
    collate = trainer.data_collator
    trainer.model.eval()  # no input-feature noise
    online_batch = collate([train[i] for i in range(8)])
    offline_batch = collate([offline[i] for i in range(8)])
    with torch.no_grad():
        a = trainer.compute_loss(trainer.model, online_batch)
        b = trainer.compute_loss(trainer.model, offline_batch)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    int8 = OfflineFeatureDataset(extract_features(target, train[:8], tmp_path / "int8", shard_size=4, dtype=torch.int8))
    with torch.no_grad():
        c = trainer.compute_loss(trainer.model, collate([int8[i] for i in range(8)]))
    assert 0 < abs(c - a) < 1e-2 * a  # per-token int8 moves the loss by its rounding only


def test_eval_reports_per_position_accuracy(setup, tmp_path):
    target, train, held_out = setup
    head = FSPADDraftModel.from_target(target, num_draft_layers=2, positions_per_layer=2, tree_depth=4)
    trainer = FSPADTrainer(model=head, args=args(tmp_path, max_steps=20, unroll_steps=3, eval_strategy="steps", eval_steps=10),
                           target=target, train_dataset=ChatDataset(train), eval_dataset=ChatDataset(held_out))
    trainer.train()
    periodic = [h for h in trainer.state.log_history if "eval_acc_p1" in h]
    assert [h["step"] for h in periodic] == [10, 20]  # evaluated during training, which then went on
    assert head.training
    metrics = trainer.evaluate()
    assert {"eval_acc_p1", "eval_acc_p2", "eval_acc_p3", "eval_acc_p4", "eval_loss"} <= set(metrics)
    assert all(0.0 <= metrics[f"eval_acc_p{k}"] <= 1.0 for k in range(1, 5))


def test_resume_after_interruption_matches_uninterrupted(setup, tmp_path):
    from transformers import TrainerCallback

    target, train, _ = setup

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 25:
                raise KeyboardInterrupt("simulated kill")

    def run(out, callbacks=(), resume=None):
        torch.manual_seed(0)
        head = FSPADDraftModel.from_target(target)
        a = args(out, max_steps=40, save_strategy="steps", save_steps=10, logging_steps=5)
        tr = FSPADTrainer(model=head, args=a, target=target, train_dataset=ChatDataset(train), callbacks=list(callbacks))
        tr.train(resume_from_checkpoint=resume)
        return head, [h["loss"] for h in tr.state.log_history if "loss" in h]

    ref_head, ref_losses = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", callbacks=[Crash()])
    assert (tmp_path / "killed" / "checkpoint-20").exists()
    head, losses = run(tmp_path / "killed", resume=True)
    # resumed from step 20: the logged losses after it equal the uninterrupted run's
    assert losses[-4:] == pytest.approx(ref_losses[-4:], rel=1e-4)
    for (n, p), (_, q) in zip(head.named_parameters(), ref_head.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=n)


def test_anneal_steps_follow_the_global_step_across_an_optimizer_restart(setup, tmp_path):
    """Warm-up, constant, then a linear anneal over the last 5 of 12 steps; a run continued from a checkpoint
    without optimizer and scheduler state (a carry) warms up again and still anneals at the same steps."""
    target, train, _ = setup
    lr = 1e-3

    def run(out, resume=None):
        a = args(out, max_steps=12, warmup_steps=2, logging_steps=1, save_strategy="steps", save_steps=6,
                 lr_scheduler_type="constant_with_warmup", anneal_steps=5, learning_rate=lr)
        tr = FSPADTrainer(model=FSPADDraftModel.from_target(target), args=a, target=target,
                          train_dataset=ChatDataset(train[:8]))
        tr.train(resume_from_checkpoint=resume)
        return {h["step"]: h["learning_rate"] for h in tr.state.log_history if "learning_rate" in h}

    full = run(tmp_path / "full")
    expected = [0, lr / 2] + [lr] * 6 + [lr * k / 5 for k in (4, 3, 2, 1)]  # the LR each step 1..12 trained at
    assert [full[s] for s in range(1, 13)] == pytest.approx(expected)
    ckpt = tmp_path / "full" / "checkpoint-6"
    for name in ("optimizer.pt", "scheduler.pt"):
        (ckpt / name).unlink(missing_ok=True)
    restarted = run(tmp_path / "full", resume=str(ckpt))
    assert [restarted[s] for s in range(7, 13)] == pytest.approx([0, lr / 2] + [lr * k / 5 for k in (4, 3, 2, 1)])
    with pytest.raises(ValueError, match="longer than the run"):
        FSPADTrainer(
            model=FSPADDraftModel.from_target(target), target=target, train_dataset=ChatDataset(train[:8]),
            args=args(tmp_path / "bad", max_steps=3, anneal_steps=5)).train()


def test_reduced_draft_vocab_trains_and_stays_lossless(setup, tmp_path):
    target, train, held_out = setup
    ids = select_draft_vocab(train, 32, VOCAB)
    assert ids.shape == (32,) and torch.equal(ids, ids.sort().values)
    head = FSPADDraftModel.from_target(target, draft_vocab_size=32)
    head.set_draft_vocab(ids)
    FSPADTrainer(model=head, args=args(tmp_path, max_steps=60), target=target, train_dataset=ChatDataset(train)).train()
    for ex in held_out[:4]:
        prompt = torch.tensor([ex["input_ids"][:6]])
        ref = target.generate(prompt, max_new_tokens=25, do_sample=False)
        assert torch.equal(target.generate(prompt, assistant_model=head, max_new_tokens=25, do_sample=False), ref)
    head.save_pretrained(tmp_path / "h")
    loaded = FSPADDraftModel.from_pretrained(tmp_path / "h")
    assert torch.equal(loaded.d2t, ids)


def test_peft_lora_finetune_generate_and_merge(setup, tmp_path):
    from peft import LoraConfig, get_peft_model

    target, train, held_out = setup
    head = FSPADDraftModel.from_target(target)
    lora = get_peft_model(head, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in head.parameters()) // 4
    FSPADTrainer(model=lora, args=args(tmp_path, max_steps=30, learning_rate=1e-2), target=target,
                 train_dataset=ChatDataset(train)).train()
    prompt = torch.tensor([held_out[0]["input_ids"][:6]])
    ref = target.generate(prompt, max_new_tokens=20, do_sample=False)
    assert torch.equal(target.generate(prompt, assistant_model=lora, max_new_tokens=20, do_sample=False, **STATIC), ref)
    tau_adapter = head.last_generation_stats.mean_accepted_length
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    merged = lora.merge_and_unload()
    assert isinstance(merged, FSPADDraftModel)
    assert torch.equal(target.generate(prompt, assistant_model=merged, max_new_tokens=20, do_sample=False, **STATIC), ref)
    assert merged.last_generation_stats.mean_accepted_length == pytest.approx(tau_adapter)


def test_two_process_training_with_accelerate(tmp_path):
    """2 CPU processes (gloo) via accelerate launch run the tiny training example's code path."""
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "train_tiny.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs the processes use gloo on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script,
           "--output_dir", str(tmp_path), "--max_steps", "20", "--quick"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout + proc.stderr
    assert (tmp_path / "head" / "model.safetensors").exists()


def test_poss_specialists_initialised_from_single_layer_head(setup):
    from fspad_hf.training.trainer import init_from_head

    target, _, _ = setup
    single = FSPADDraftModel.from_target(target)
    poss = FSPADDraftModel.from_target(target, num_draft_layers=3, positions_per_layer=2)
    init_from_head(poss, single)
    for i in range(3):
        for (n, p), (_, q) in zip(poss.layers[i].named_parameters(), single.layers[0].named_parameters()):
            assert torch.equal(p, q), n
    assert torch.equal(poss.fusion.fc.weight, single.fusion.fc.weight)
    eagle = FSPADDraftModel.from_target(target, feature_sampling=False, partial_alignment=False)
    with pytest.raises(ValueError, match="FS/PAD"):
        init_from_head(poss, eagle)


def test_head_trained_with_bf16_mixed_precision_still_generates(tmp_path):
    """accelerate wraps `forward` to return float32 under mixed precision: drafting must still work."""
    target = make_target("llama", seed=41, dtype=torch.bfloat16)
    head = FSPADDraftModel.from_target(target)
    data = ChatDataset([{"input_ids": list(range(1, 20)), "loss_mask": [1] * 19}] * 4)
    FSPADTrainer(model=head, args=args(tmp_path, max_steps=2, bf16=True), target=target, train_dataset=data).train()
    assert "_original_forward" not in head.__dict__  # accelerate's wrapper is removed after training
    with torch.no_grad():
        out = head(input_ids=torch.tensor([[2, 3]]), hidden_states=torch.randn(1, 2, head.config.hidden_size))
    assert out.regress_hidden.dtype == head.dtype == out.logits.dtype
    prompt = torch.tensor([[1, 2, 3]])
    out = target.generate(prompt, assistant_model=head, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == 11


def test_finish_distributed_closes_the_process_group_and_is_a_no_op_without_one(tmp_path):
    """A rank leaving with its gloo group alive can abort at exit (SIGABRT in teardown): scripts end with this."""
    from fspad_hf import finish_distributed

    finish_distributed()  # one process, no group: nothing to do
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    finish_distributed()
    assert not torch.distributed.is_initialized()
