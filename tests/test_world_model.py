"""The latent world model: shapes, loss pieces, KL masking, straight-through, parity."""

from __future__ import annotations

import math

import pytest
import torch

from reverie.nets.math import categorical_kl
from reverie.world.latent import (
    WorldModel,
    WorldModelConfig,
    count_params,
    small_world_model_config,
)

VEC = {"vector": ((4,), "float32")}
IMG = {"image": ((64, 64, 3), "uint8")}
DICT = {"image": ((64, 64, 3), "uint8"), "vector": ((2, 3), "float32")}




def tiny_cfg(backbone: str = "gru", **over) -> WorldModelConfig:
    kw = dict(backbone=backbone, d_model=32, n_layers=1, stoch=4, classes=5, hidden=32,
              mlp_layers=1, cnn_depth=4, cnn_embed_channels=4)
    kw.update(over)
    return WorldModelConfig(**kw)


def make(spec=VEC, action_dim=3, discrete=True, seed=0, **over) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(spec, action_dim, discrete, tiny_cfg(**over))


def random_batch(spec, B, T, action_dim, discrete, seed=0, reset_at=()):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for k, (shape, dtype) in spec.items():
        if dtype == "uint8":
            batch[k] = torch.randint(0, 256, (B, T, *shape), generator=g, dtype=torch.uint8)
        else:
            batch[k] = torch.randn(B, T, *shape, generator=g) * 3
    if discrete:
        batch["action"] = torch.randint(0, action_dim, (B, T), generator=g)
    else:
        batch["action"] = torch.rand(B, T, action_dim, generator=g) * 2 - 1
    batch["reward"] = torch.randn(B, T, generator=g)
    batch["terminal"] = torch.rand(B, T, generator=g) < 0.1
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = True
    for t in reset_at:
        reset[:, t] = True
    batch["reset"] = reset
    return batch


@pytest.mark.parametrize(
    "spec,discrete", [(VEC, True), (IMG, False), (DICT, True), (DICT, False)]
)
def test_shapes(spec, discrete):
    B, T, A = 2, 3, 3
    m = make(spec, A, discrete)
    batch = random_batch(spec, B, T, A, discrete)
    obs = {k: batch[k] for k in spec}
    z, h, state = m.observe(obs, batch["action"], batch["reset"])
    assert z.shape == (B, T, m.stoch_dim) == (B, T, 20)
    assert h.shape == (B, T, m.deter_dim) == (B, T, 32)
    assert m.feat_dim == 52 and m.feat(z, h).shape == (B, T, 52)
    assert m.encode(obs).shape == (B, T, 4, 5)
    assert m.prior(h).shape == (B, T, 4, 5)
    assert m.reward(h).shape == (B, T) and m.cont(h).shape == (B, T)
    assert ((m.cont(h) > 0) & (m.cont(h) < 1)).all()
    rec = m.decode(z)
    assert set(rec) == set(spec)
    for k, (shape, dtype) in spec.items():
        assert rec[k].shape == (B, T, *shape)
        if dtype == "uint8":
            assert rec[k].min() >= 0 and rec[k].max() <= 1
    h1, state = m.imagine_step(z[:, -1], batch["action"][:, -1], state)
    assert h1.shape == (B, m.deter_dim)
    total, metrics, out = m.loss(batch)
    assert total.dim() == 0 and torch.isfinite(total)
    assert out["z"].shape == (B, T, 20) and not out["z"].requires_grad
    assert out["h"].shape == (B, T, 32) and not out["h"].requires_grad
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_loss_is_sum_of_its_terms_and_reward_starts_at_log_bins():
    m = make(VEC, 3, True, kl_dyn=0.7, kl_rep=0.2)
    torch.manual_seed(1)
    total, met, _ = m.loss(random_batch(VEC, 3, 6, 3, True, reset_at=(3,)))
    parts = met["wm/recon"] + met["wm/reward"] + met["wm/cont"]
    parts += 0.7 * met["wm/kl_dyn"] + 0.2 * met["wm/kl_rep"]
    assert abs(total.item() - parts) < 1e-4
    # the reward head starts uniform over 255 bins: cross-entropy log(255) for any target
    assert abs(met["wm/reward"] - math.log(255)) < 1e-5
    # free bits: every per-step KL term is at least 1 nat
    assert met["wm/kl_dyn"] >= 1.0 and met["wm/kl_rep"] >= 1.0


def test_reward_head_starts_at_exactly_zero():
    m = make(VEC)
    h = torch.randn(7, 5, m.deter_dim) * 10
    assert torch.equal(m.reward(h), torch.zeros(7, 5))


def test_straight_through_sample_is_one_hot_and_passes_gradient():
    m = make(VEC)
    torch.manual_seed(0)
    logits = torch.randn(6, 4, 5, requires_grad=True)
    z = m.sample(logits)
    assert z.shape == (6, 20)
    zz = z.detach().view(6, 4, 5)
    assert torch.equal(zz.sum(-1), torch.ones(6, 4))
    assert set(zz.unique().tolist()) <= {0.0, 1.0}
    # the backward pass is that of softmax(logits)
    w = torch.randn(6, 20)
    (g_st,) = torch.autograd.grad((z * w).sum(), logits)
    (g_probs,) = torch.autograd.grad((torch.softmax(logits, -1).flatten(-2) * w).sum(), logits)
    assert torch.allclose(g_st, g_probs, atol=1e-6) and g_st.abs().sum() > 0


def test_sample_follows_the_distribution():
    m = make(VEC)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = torch.log(probs + 1e-12).expand(4000, 4, 5)
    torch.manual_seed(0)
    freq = m.sample(logits).view(4000, 4, 5).mean(dim=(0, 1))
    assert torch.allclose(freq, probs, atol=0.015)


def test_posterior_has_unimix_floor():
    m = make(VEC)
    batch = random_batch(VEC, 2, 3, 3, True)
    with torch.no_grad():
        m.posterior_head.weight.mul_(1e4)  # make the raw posterior nearly deterministic
        p = m.encode({"vector": batch["vector"]}).exp()
    assert p.min().item() >= 0.01 / 5 - 1e-7
    assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)


def test_kl_is_masked_at_reset_boundaries():
    """o_{T-1} opens a new episode: the KL pair (T-2, T-1) is dropped, so changing o_{T-1}
    leaves every KL term unchanged. Without the reset the same change moves the KL."""
    m = make(VEC, free_bits=0.0)
    B, T = 2, 5
    batch = random_batch(VEC, B, T, 3, True)
    other = dict(batch)
    other["vector"] = batch["vector"].clone()
    other["vector"][:, T - 1] = torch.randn(B, 4) * 5

    def kl(b):
        torch.manual_seed(3)
        with torch.no_grad():
            return m.loss(b)[1]["wm/kl"]

    with_reset = dict(batch, reset=batch["reset"].clone())
    with_reset["reset"][:, T - 1] = True
    other_reset = dict(other, reset=with_reset["reset"])
    assert kl(with_reset) == kl(other_reset)
    assert abs(kl(batch) - kl(other)) > 1e-4
    # and the masked mean equals a hand-masked mean of the per-step KL
    torch.manual_seed(3)
    with torch.no_grad():
        post = m.encode({"vector": batch["vector"]})
        z = m.sample(post)
        h, _ = m.backbone(m.backbone_input(z, batch["action"]), None, with_reset["reset"])
        per_step = categorical_kl(post[:, 1:], m.prior(h[:, :-1]))[:, : T - 2]
    assert abs(per_step.mean().item() - kl(with_reset)) < 1e-5


def test_free_bits_stop_the_kl_gradient():
    batch = random_batch(VEC, 2, 6, 3, True)
    for fb, expect_zero in ((1e3, True), (0.0, False)):
        m = make(VEC, free_bits=fb)
        m.loss(batch)[0].backward()
        g = sum(p.grad.abs().sum().item() for p in m.prior_head.parameters())
        assert (g == 0.0) == expect_zero


def parity_backbones():
    return [("gru", {}), ("transformer", {"n_heads": 2, "context": 16}),
            ("mamba2", {"d_state": 8, "head_dim": 8, "chunk_size": 4})]


@pytest.mark.parametrize("name,kwargs", parity_backbones())
def test_observe_equals_imagine_steps(name, kwargs):
    pytest.importorskip(f"reverie.sequence.{name}")
    m = make(VEC, 3, True, backbone=name, n_layers=2, backbone_kwargs=kwargs).eval()
    B, T = 3, 9
    batch = random_batch(VEC, B, T, 3, True, reset_at=(4,))
    batch["reset"][1, 6] = True
    with torch.no_grad():
        z, h, s_obs = m.observe({"vector": batch["vector"]}, batch["action"], batch["reset"])
        state = m.initial_state(B)
        hs = []
        for t in range(T):
            state = m.reset_state(state, batch["reset"][:, t])
            h_t, state = m.imagine_step(z[:, t], batch["action"][:, t], state)
            hs.append(h_t)
        assert (torch.stack(hs, 1) - h).abs().max().item() <= 1e-4
        # the returned states agree too: the next step gives the same h
        a, _ = m.imagine_step(z[:, 0], batch["action"][:, 0], s_obs)
        b, _ = m.imagine_step(z[:, 0], batch["action"][:, 0], state)
    assert (a - b).abs().max().item() <= 1e-4


def ring_batch(B: int, T: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Deterministic ring of 5 cells: obs one-hot(pos), action 0/1 moves -1/+1,
    reward 1 when the move lands on cell 0, terminal never."""
    pos = torch.randint(0, 5, (B,), generator=g)
    act = torch.randint(0, 2, (B, T), generator=g)
    obs, rew = [], []
    for t in range(T):
        obs.append(torch.nn.functional.one_hot(pos, 5).float())
        pos = (pos + 2 * act[:, t] - 1) % 5
        rew.append((pos == 0).float())
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[:, 0] = True
    return {"vector": torch.stack(obs, 1), "action": act, "reward": torch.stack(rew, 1),
            "terminal": torch.zeros(B, T, dtype=torch.bool), "reset": reset}


def test_loss_decreases_on_a_deterministic_task():
    torch.manual_seed(0)
    m = WorldModel({"vector": ((5,), "float32")}, 2, True,
                   tiny_cfg(d_model=32, stoch=8, classes=8, hidden=64))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses, rewards, recons = [], [], []
    for _ in range(30):
        loss, met, _ = m.loss(ring_batch(8, 12, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        rewards.append(met["wm/reward"])
        recons.append(met["wm/recon"])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    # reward cross-entropy starts at log(255) = 5.5 and the one-hot obs become predictable
    assert sum(rewards[-5:]) / 5 < 0.3 * math.log(255)
    assert sum(recons[-5:]) / 5 < 0.3 * recons[0]


def test_atari_parameter_budget():
    """The atari100k preset's world model has Drama's ~7M parameters."""
    from omegaconf import OmegaConf

    from reverie.config import build_config

    world = OmegaConf.to_object(build_config("atari100k").imagine.world)
    m = WorldModel(IMG, 18, True, world)
    n = count_params(m)
    assert n == sum(m.param_breakdown().values())
    assert 6e6 <= n <= 8e6, m.param_breakdown()


def test_small_config_is_small():
    m = WorldModel({"vector": ((4,), "float32")}, 2, True, small_world_model_config("gru"))
    assert count_params(m) < 1.5e6
    assert m.stoch_dim == 256 and m.deter_dim == 128


def test_bad_inputs_raise_value_errors():
    m = make(VEC)
    b = random_batch(VEC, 2, 3, 3, True)
    with pytest.raises(ValueError, match="missing keys"):
        m.encode({"other": b["vector"]})
    with pytest.raises(ValueError, match="reset"):
        m.loss({k: v for k, v in b.items() if k != "reset"})
    with pytest.raises(ValueError, match="action_dim=3"):
        m.action_input(torch.zeros(2, 4))
    mc = make(VEC, 2, False)
    with pytest.raises(ValueError, match="float"):
        mc.action_input(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="backbone"):
        make(VEC, backbone="lstm")
    with pytest.raises(ValueError, match="obs_spec"):
        WorldModel({}, 2, True, tiny_cfg())
    with pytest.raises(ValueError, match="64x64"):
        WorldModel({"image": ((60, 60, 3), "uint8")}, 2, True, tiny_cfg())


def test_builds_from_an_omegaconf_structured_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(tiny_cfg("mamba2"))
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(
        ["backbone_kwargs.d_state=4", "backbone_kwargs.head_dim=8", "stoch=3"]))
    m = WorldModel(VEC, 3, True, cfg)
    assert m.stoch_dim == 15
    total, _, _ = m.loss(random_batch(VEC, 2, 4, 3, True))
    assert torch.isfinite(total)


def test_free_bits_per_step_and_per_batch_on_a_hand_built_kl():
    from reverie.world.latent import free_bits_kl

    kl = torch.tensor([[0.5, 3.0, 0.2], [2.0, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last step is across a reset
    # per step: each KL raised to 1 first: (1 + 3 + 1 + 2 + 1) / 5
    assert free_bits_kl(kl, mask, 1.0, "step").item() == pytest.approx(8.0 / 5)
    # per batch (Drama): mean of the raw KL (5.8 / 5 = 1.16), then max(1, .)
    assert free_bits_kl(kl, mask, 1.0, "batch").item() == pytest.approx(1.16)
    assert free_bits_kl(kl * 0.1, mask, 1.0, "batch").item() == pytest.approx(1.0)
    # where every step is above the floor the two agree
    assert free_bits_kl(kl + 1, mask, 1.0, "batch").item() == pytest.approx(
        free_bits_kl(kl + 1, mask, 1.0, "step").item())


def test_prior_head_can_be_drama_s_single_linear_layer():
    from reverie.world.latent import WorldModel

    cfg = small_world_model_config("gru", d_model=32, hidden=64, stoch=4, classes=4,
                                   prior_layers=0)
    wm = WorldModel({"vector": ((4,), "float32")}, 2, True, cfg)
    linears = [m for m in wm.prior_head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 32
    default = WorldModel({"vector": ((4,), "float32")}, 2, True,
                         small_world_model_config("gru", d_model=32, hidden=64, stoch=4,
                                                  classes=4))
    assert sum(isinstance(m, torch.nn.Linear) for m in default.prior_head.modules()) == 3


def test_continuation_target_is_one_at_a_truncation():
    """A time limit (the replay's `truncated`) does not end the MDP: the continuation head's
    target there is 1, as everywhere but at `terminal` (closed form: BCE of its logits)."""
    import torch.nn.functional as F

    m = make(VEC, 3, True)
    batch = random_batch(VEC, 2, 6, 3, True, seed=4)
    batch["terminal"] = torch.zeros(2, 6, dtype=torch.bool)
    batch["terminal"][1, 2] = True
    batch["truncated"] = torch.zeros(2, 6, dtype=torch.bool)
    batch["truncated"][0, 4] = True  # the replay hands both flags to the agent's batch
    torch.manual_seed(0)
    _, met, aux = m.loss(batch)
    logits = m.cont_head(aux["h"]).squeeze(-1)
    target = torch.ones(2, 6)
    target[1, 2] = 0.0  # only the terminal step; the truncated one stays 1
    expected = F.binary_cross_entropy_with_logits(logits, target).item()
    assert abs(met["wm/cont"] - expected) < 1e-6
    as_terminal = F.binary_cross_entropy_with_logits(
        logits, target.index_put((torch.tensor([0]), torch.tensor([4])), torch.tensor(0.0))).item()
    assert abs(as_terminal - expected) > 1e-3  # the test tells the two apart
