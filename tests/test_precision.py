"""run.precision=bf16: the agents' matmuls run in bfloat16 under autocast, what reads a
distribution or a loss gets float32, fp32 leaves everything as it was, and every agent trains
through the driver, deterministically, with it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch.overrides import TorchFunctionMode

from reverie.behavior.distributions import ActionHead
from reverie.behavior.sac import relu_mlp
from reverie.cli import main
from reverie.config import build_config
from reverie.errors import UserError
from reverie.nets.math import full, symlog_bins, two_hot_loss, two_hot_value, unimix
from reverie.nets.mlp import MLP
from reverie.precision import autocast, use_precision
from reverie.run.driver import Trainer
from reverie.world.disagreement import DisagreementHeads
from reverie.world.ensemble import EnsembleDynamics

sys.path.insert(0, str(Path(__file__).parent))
from test_driver_hooks import TINY_PPO  # noqa: E402
from test_mbpo import TINY_RUN as TINY_MBPO  # noqa: E402
from tiny import TINY_MODEL  # noqa: E402

CPU = torch.device("cpu")
BF16 = autocast(CPU, "bf16")


def test_full_upcasts_half_precisions_only():
    x = torch.randn(3)
    assert full(x) is x
    assert full(x.double()).dtype == torch.float64  # tests' float64 stays float64
    assert full(x.bfloat16()).dtype == torch.float32
    assert full(x.half()).dtype == torch.float32


def test_under_bf16_layers_compute_in_bfloat16_and_heads_return_float32():
    torch.manual_seed(0)
    x = torch.randn(8, 12)
    trunk, head = MLP(12, None, 16, 2), MLP(12, 5, 16, 2)
    sac_net, policy = relu_mlp(12, 5, 16, 2), ActionHead(spaces.Discrete(5), 12)
    with BF16:
        assert trunk(x).dtype == torch.bfloat16  # hidden features: as computed
        assert head(x).dtype == torch.float32
        assert sac_net(x).dtype == torch.float32
        assert policy(x).logits.dtype == torch.float32
    # outside autocast nothing changes: the same float32 numbers as before
    assert torch.equal(head(x), head.net(x))


def test_ensemble_and_disagreement_heads_return_float32_under_bf16():
    ens = EnsembleDynamics(3, 2, members=3, elites=2, hidden=16, layers=2)
    dis = DisagreementHeads(12, 4, 3, heads=3, hidden=16, layers=2)
    with BF16:
        mean, logvar, logit = ens(torch.randn(3, 5, 5))
        assert {mean.dtype, logvar.dtype, logit.dtype} == {torch.float32}
        assert dis(torch.randn(5, 12)).dtype == torch.float32


def test_distribution_math_reads_bf16_logits_in_float32():
    """What a bf16 layer hands over is upcast before softmax/log-softmax: the results equal
    the float32 computation on the same (rounded) logits, and come out float32."""
    torch.manual_seed(0)
    bins = symlog_bins(255)
    logits = (3 * torch.randn(64, 255)).bfloat16()
    target = 5 * torch.randn(64)
    loss = two_hot_loss(logits, target, bins)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, two_hot_loss(logits.float(), target, bins))
    assert torch.equal(two_hot_value(logits, bins), two_hot_value(logits.float(), bins))
    mixed = unimix(logits[:, :16], 0.01)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, unimix(logits[:, :16].float(), 0.01))


def test_fp32_leaves_the_agent_untouched():
    class Agent:
        def act(self):
            return torch.ones(2) @ torch.ones(2)

    agent = Agent()
    bound = agent.act
    assert use_precision(agent, CPU, "fp32") is agent and agent.act == bound
    assert "act" not in vars(agent)  # no wrapper: the default path is the code as it was
    use_precision(agent, CPU, "bf16")
    assert agent.act().dtype == torch.bfloat16  # the matmul ran under autocast
    with pytest.raises(ValueError, match="fp32, bf16"):
        use_precision(Agent(), CPU, "fp16")


def test_precision_typo_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(UserError, match=r"run.precision must be fp32 or bf16, got 'bf61' "
                                        r"\(did you mean 'bf16'\?\)"):
        build_config("cartpole", ["run.precision=bf61"])
    assert main(["train", "--set", "run.precision=fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "float16 is not offered" in err


class MatmulDtypes(TorchFunctionMode):
    """Records the dtype of every matrix product's result while active."""

    PRODUCTS = {F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm,
                torch.einsum, torch.Tensor.__matmul__}

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS and isinstance(out, torch.Tensor):
            self.dtypes.add(out.dtype)
        return out


RUNS = {  # each agent at test size, through the driver
    "imagine": ("cartpole", [*TINY_MODEL, "imagine.world.backbone_kwargs={}",
                             "run.train_ratio=16", "run.prefill=64", "run.eval_every=100",
                             "run.eval_episodes=1", "run.checkpoint_every=100",
                             "run.progress=false", "run.compile=off", "run.log_every=32"],
                {"backbone": "mamba2", "steps": 160}),
    "mbpo": ("mbpo-pendulum", [*TINY_MBPO, "run.progress=false"], {"steps": 120}),
    "rppo": ("popgym-ppo", TINY_PPO, {"steps": 256, "backbone": "gru"}),
}


@pytest.mark.parametrize("agent", list(RUNS))
def test_every_agent_trains_in_bf16_deterministically(tmp_path, agent):
    preset, over, flags = RUNS[agent]
    cfg = build_config(preset, [*over, "run.precision=bf16"], flags)
    products = MatmulDtypes()
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(cfg, tmp_path / name)
        if name == "a":
            with products:
                trainer.train()
        else:
            trainer.train()
        runs.append([json.loads(line) for line in
                     (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    losses = [v for r in runs[0] for k, v in r.items() if "loss" in k]
    assert losses and all(map(lambda v: v == v and abs(v) < 1e30, losses))  # finite
    assert torch.bfloat16 in products.dtypes  # the matmuls did run in bfloat16
    assert runs[0] == runs[1]  # same seed and config, same run


def test_precision_may_change_on_resume(tmp_path):
    preset, over, flags = RUNS["imagine"]
    Trainer(build_config(preset, over, {**flags, "steps": 100}), tmp_path / "run").train()
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "160", "--no-progress",
                 "--set", "run.precision=bf16"]) == 0
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "precision: bf16" in cfg
