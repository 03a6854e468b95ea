"""Training objective: alignment, unrolled (HASS/PosS) exactness, loss decrease."""

import pytest
import torch

from fspad_hf import FSPADDraftModel
from fspad_hf.training.losses import position_mask, unroll_mask, unrolled_outputs
from fspad_hf.masks import causal_additive_mask
from fspad_hf.training.objective import DraftObjective
from tests.conftest import make_target


def _features(target, ids):
    with torch.no_grad():
        return target.get_decoder()(ids).last_hidden_state


def test_position_mask_alignment():
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0]])
    # head position t predicts f_{t+1} (drafts x_{t+2}): counts iff loss_mask[t + 2]
    assert position_mask(loss_mask).tolist() == [[0, 1, 1, 1, 0, 0]]


def test_unroll_mask_step0_is_causal():
    m0 = unroll_mask(5, 0, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(m0, causal_additive_mask(5, 0, torch.float32, torch.device("cpu")))
    m2 = unroll_mask(4, 2, torch.float32, torch.device("cpu"))[0, 0] == 0
    # block 2, position 3 sees block 0 positions <= 1, block 1 position 2, block 2 position 3
    row = m2[2 * 4 + 3]
    assert row[:4].tolist() == [True, True, False, False]
    assert row[4:8].tolist() == [False, False, True, False]
    assert row[8:].tolist() == [False, False, False, True]


@pytest.mark.parametrize("layers,per", [(1, 1), (3, 1), (2, 2)])
def test_unrolled_outputs_equal_sequential_drafting(layers, per):
    """Step k at position t == drafting k+1 tokens along the true tokens from a context ending at t-k."""
    torch.manual_seed(0)
    target = make_target("llama", seed=1, dtype=torch.float64)  # float64: any mismatch is a real one
    head = FSPADDraftModel.from_target(target, num_draft_layers=layers, positions_per_layer=per).eval()
    ids = torch.randint(0, 96, (1, 12))
    feats = _features(target, ids)
    steps = 4
    with torch.no_grad():
        outs = unrolled_outputs(head, ids, feats, steps)
        for k in range(steps):
            for t in range(k, ids.shape[1] - 1):
                # inputs: true (f_s, x_{s+1}) for s <= t-k, then fed-back predictions along true tokens
                fused = [head.fusion(head.embed(ids[:, 1 : t - k + 2]), feats[:, : t - k + 1])]
                prev = None
                for j in range(k + 1):
                    layer = head.config.specialist_for_position(j + 1)
                    if j > 0:
                        s = t - k + j
                        fused.append(head.fusion(head.embed(ids[:, s + 1 : s + 2]), prev))
                    z = torch.cat(fused, dim=1)
                    n = z.shape[1]
                    out = head.draft_step(layer, z, torch.arange(n)[None], causal_additive_mask(n, 0, z.dtype, z.device), None)
                    prev = out.feedback[:, -1:]
                torch.testing.assert_close(outs[k].feedback[:, t], prev[:, 0], atol=1e-9, rtol=1e-9)
                torch.testing.assert_close(outs[k].predict[:, t], out.predict[:, -1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("fs,pad", [(False, False), (True, True)])
def test_loss_decreases_and_parts_logged(fs, pad):
    torch.manual_seed(0)
    target = make_target("llama", seed=2)
    head = FSPADDraftModel.from_target(target, feature_sampling=fs, partial_alignment=pad).train()
    objective = DraftObjective(head)
    ids = torch.randint(0, 96, (4, 24))
    mask = torch.ones_like(ids)
    feats = _features(target, ids)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, metrics = objective(ids, feats, mask, unroll_steps=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert {"feature_loss_p1", "logit_loss_p1", "acc_p1", "acc_p2"} <= set(metrics)
    # frozen target pieces get no gradient and are not parameters of the head
    assert target.get_input_embeddings().weight.grad is None


def test_pad_trains_halves_with_their_own_terms():
    target = make_target("llama", seed=3)
    head = FSPADDraftModel.from_target(target, partial_alignment=True).train()
    ids = torch.randint(0, 96, (2, 10))
    loss, _ = DraftObjective(head)(ids, _features(target, ids), torch.ones_like(ids))
    loss.backward()
    down = head.layers[0].mlp.down_proj.weight.grad  # [2H, I]: first half -> predict, second -> regress
    assert down.shape[0] == 64 and down[:32].abs().sum() > 0 and down[32:].abs().sum() > 0
