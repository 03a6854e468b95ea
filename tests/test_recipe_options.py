"""Recipe-study training options (issue 13 item 3): target-layer init, feature noise switch, unroll decay."""

import pytest
import torch

from fspad_hf.cli import HeadArguments, _build_head, _parse
from fspad_hf.head.target_parts import decoder_of
from fspad_hf.training.data import ChatDataset
from fspad_hf.training.losses import LossWeights, draft_objective
from fspad_hf.training.objective import DraftObjective
from fspad_hf.training.trainer import FSPADTrainer, FSPADTrainingArguments
from tests.conftest import make_target


def _batch(seed=0, batch=2, length=20, vocab=96, hidden=32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    feats = torch.randn(batch, length, hidden, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, 5:] = 1
    return ids, feats, mask


# ------------------------------------------------------------------ --init_layers_from_target
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("method,layers", [("eagle2", 1), ("fspad", 1), ("fspad", 2)])
def test_init_layers_from_target_copies_last_layer(arch, method, layers):
    target = make_target(arch, seed=3)
    (hargs,) = _parse((HeadArguments,), ["--method", method, "--num_draft_layers", str(layers),
                                         "--init_layers_from_target"])
    head = _build_head(target, None, hargs)
    last = dict(decoder_of(target).layers[-1].named_parameters())
    hidden = target.config.hidden_size
    for layer in head.layers:
        params = dict(layer.named_parameters())
        assert "input_layernorm.weight" not in params
        assert {"self_attn.q_proj.weight", "mlp.gate_proj.weight", "post_attention_layernorm.weight"} <= set(params)
        for name, value in params.items():
            src = last[name]
            if name.startswith("mlp.down_proj") and method == "fspad":  # PAD: I -> 2H, the target's copy in both halves
                assert value.shape[0] == 2 * hidden
                torch.testing.assert_close(value[:hidden], src, rtol=0, atol=0)
                torch.testing.assert_close(value[hidden:], src, rtol=0, atol=0)
            else:
                torch.testing.assert_close(value, src, rtol=0, atol=0, msg=name)
    # the fusion has no counterpart in the target and stays trainable / random
    assert head.fusion.fc.weight.requires_grad


def test_init_layers_from_target_off_by_default_and_exclusive_with_init_from():
    target = make_target("llama", seed=3)
    head = _build_head(target, None, HeadArguments(method="fspad"))
    last = decoder_of(target).layers[-1]
    assert not torch.equal(head.layers[0].self_attn.q_proj.weight, last.self_attn.q_proj.weight)
    with pytest.raises(SystemExit):
        _build_head(target, None, HeadArguments(init_from="somewhere", init_layers_from_target=True))


def test_initialised_head_still_drafts_losslessly():
    target = make_target("llama", seed=3)
    head = _build_head(target, None, HeadArguments(method="fspad", init_layers_from_target=True,
                                                   tree_total_tokens=8, tree_depth=3, tree_top_k=4))
    ids = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(0))
    plain = target.generate(ids, max_new_tokens=20, do_sample=False)
    fast = target.generate(ids, assistant_model=head, max_new_tokens=20, do_sample=False)
    assert torch.equal(plain, fast)


# ------------------------------------------------------------------ --feature_noise
def test_feature_noise_option_is_stored_in_head_config():
    target = make_target("llama", seed=3)
    (hargs,) = _parse((HeadArguments,), ["--feature_noise", "0"])
    assert hargs.feature_noise == 0.0
    head = _build_head(target, None, hargs)
    assert head.config.feature_noise == 0.0
    assert _build_head(target, None, HeadArguments(feature_noise=0.5)).config.feature_noise == 0.5
    assert _build_head(target, None, HeadArguments()).config.feature_noise == pytest.approx(0.2)  # default unchanged


def test_feature_noise_zero_makes_training_loss_deterministic():
    target = make_target("llama", seed=3)
    ids, feats, mask = _batch()
    noisy = DraftObjective(_build_head(target, None, HeadArguments(feature_noise=0.5))).train()
    quiet = DraftObjective(_build_head(target, None, HeadArguments(feature_noise=0.0))).train()
    torch.manual_seed(0)
    a, _ = noisy(ids, feats, mask)
    b, _ = noisy(ids, feats, mask)
    assert not torch.equal(a, b)  # noise on: two training passes differ
    c, _ = quiet(ids, feats, mask)
    d, _ = quiet(ids, feats, mask)
    e, _ = quiet.eval()(ids, feats, mask)
    assert torch.equal(c, d) and torch.equal(c, e)  # noise off: training == eval (no noise)


# ------------------------------------------------------------------ --unroll_decay
def test_step_weights():
    w = LossWeights(step_decay=0.8)
    assert [w.step_weight(k) for k in range(3)] == pytest.approx([1.0, 0.8, 0.64])
    assert LossWeights().step_weight(5) == 1.0
    assert LossWeights(step_decay=0.0).step_weight(0) == 1.0


def test_unroll_decay_zero_equals_one_step_loss_and_decay_weights_steps():
    target = make_target("llama", seed=3)
    head = _build_head(target, None, HeadArguments(method="fspad", feature_noise=0.0))
    ids, feats, mask = _batch()
    one, _ = draft_objective(head, ids, feats, mask, steps=1)
    zero, metrics = draft_objective(head, ids, feats, mask, steps=3, weights=LossWeights(step_decay=0.0))
    torch.testing.assert_close(zero, one)
    assert "acc_p3" in metrics  # later steps still measured
    equal, _ = draft_objective(head, ids, feats, mask, steps=3)
    assert equal > one * 1.5  # default: three equally weighted steps
    # decay 0.5: total = l0 + 0.5 l1 + 0.25 l2, with the per-step losses recovered from decays 0 / 1 and two steps
    two, _ = draft_objective(head, ids, feats, mask, steps=2)
    l0, l1, l2 = one, two - one, equal - two
    half, _ = draft_objective(head, ids, feats, mask, steps=3, weights=LossWeights(step_decay=0.5))
    torch.testing.assert_close(half, l0 + 0.5 * l1 + 0.25 * l2)


def test_trainer_applies_unroll_decay_to_training_loss_only(tmp_path):
    target = make_target("llama", seed=3)
    head = _build_head(target, None, HeadArguments(method="fspad", feature_noise=0.0))
    ids, feats, mask = _batch()
    data = ChatDataset([{"input_ids": i.tolist(), "loss_mask": m.tolist()} for i, m in zip(ids, mask)])
    inputs = {"input_ids": ids, "hidden_states": feats, "loss_mask": mask}

    def trainer(**kw):
        args = FSPADTrainingArguments(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", report_to=[], **kw)
        return FSPADTrainer(model=head, args=args, target=target, train_dataset=data)

    assert FSPADTrainingArguments(output_dir=str(tmp_path)).unroll_decay == 1.0
    one = trainer(unroll_steps=1).compute_loss(trainer(unroll_steps=1).model, inputs)
    t = trainer(unroll_steps=3, unroll_decay=0.0)
    torch.testing.assert_close(t.compute_loss(t.model, inputs), one)
    assert t._weights().step_decay == 0.0 and t._weights(training=False).step_decay == 1.0
    full = trainer(unroll_steps=3, unroll_decay=1.0)
    assert full.compute_loss(full.model, inputs) > one * 1.5
