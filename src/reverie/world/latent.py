"""The latent world model of Drama / STORM: categorical latents + any sequence backbone.

    e_t  = encoder(o_t)                                   (CNN for images, MLP on symlog vectors)
    z_t  ~ q(z_t | o_t)      32x32 categorical, 1% unimix, straight-through one-hot
    h_t  = backbone(SiLU(LN(W [z_t, onehot(a_t)])))        (GRU, Transformer, Mamba-1/2, FFM)
    p(z_{t+1} | h_t), r̂_t = reward(h_t), ĉ_t = cont(h_t),  ô_t = decoder(z_t)

Loss per step (DreamerV3 §3 with STORM's decoder from z_t alone):
    recon + reward + cont + kl_dyn · max(1, KL[sg(q_{t+1}) || p(·|h_t)])
                          + kl_rep · max(1, KL[q_{t+1} || sg(p(·|h_t))])
(free bits per step; `free_bits_mode="batch"` clamps the batch mean instead, as Drama does.)
The KL pair (t, t+1) is dropped where `reset[:, t+1]` (o_{t+1} opens a new episode, so
h_t has no business predicting it).

Parameter budget of the Drama/Atari100k configuration (64x64x3 frames, 18 actions, the
defaults of `WorldModelConfig`, backbone mamba2 d_model 512 x 2 layers, expand 2,
d_state 16, head_dim 64), measured with `WorldModel.param_breakdown`:

    image encoder  (CNN 24-48-96-192, 1x1 -> 64x4x4)        0.40M
    posterior head (1024 -> 32x32)                          1.05M
    input proj     ([1024 + 18] -> 512, LN)                 0.54M
    backbone       (2 Mamba-2 blocks)                       3.21M
    prior head     (512 -> 256 -> 1024)                     0.40M
    reward head    (512 -> 256 -> 255, zero-init)           0.20M
    cont head      (512 -> 256 -> 1)                        0.13M
    image decoder  (1024 -> 64x4x4, 1x1, deconvs)           1.45M
    total                                                   7.37M   (Drama reports ~7M)

tests/test_world_model.py::test_atari_parameter_budget keeps it within 6-8M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reverie.errors import suggest
from reverie.nets import categorical_kernel
from reverie.nets.cnn import N_STAGES, ConvDecoder, ConvEncoder
from reverie.nets.math import (
    categorical_entropy,
    categorical_kl,
    full,
    symexp,
    symlog,
    symlog_bins,
    two_hot_loss,
    two_hot_value,
    unimix,
)
from reverie.nets.mlp import MLP
from reverie.nets.onehot import onehot_linear, onehot_rows, use_onehot
from reverie.sequence import State, make_backbone


@dataclass
class WorldModelConfig:
    """Sizes and loss weights of the latent world model (primitives only: an OmegaConf
    structured config). Defaults give Drama's ~7M-parameter Atari100k model with mamba2;
    `small_world_model_config` is the CPU-sized one for vector tasks such as CartPole."""

    backbone: str = "mamba2"
    d_model: int = 512
    n_layers: int = 2
    backbone_kwargs: dict = field(default_factory=dict)
    stoch: int = 32
    classes: int = 32
    unimix: float = 0.01
    hidden: int = 256  # width of encoder/decoder/head MLPs (Drama heads: 256)
    mlp_layers: int = 1  # hidden layers of those MLPs (Drama heads: 1)
    cnn_depth: int = 24  # image encoder/decoder channels depth * 2^i, i < 4 (6-8M budget)
    cnn_embed_channels: int = 64  # channels of the flattened 4x4 map (Drama: 64x4x4)
    reward_bins: int = 255
    kl_dyn: float = 1.0
    kl_rep: float = 0.1
    free_bits: float = 1.0
    # where free bits clamp the KL: "step" (DreamerV3: each step's KL, then the mean) or
    # "batch" (Drama's code: max(free_bits, the batch's mean KL))
    free_bits_mode: str = "step"
    prior_layers: int = -1  # hidden layers of the prior head; -1: mlp_layers; 0: Drama's linear


def small_world_model_config(backbone: str = "mamba2", **overrides: Any) -> WorldModelConfig:
    """A world model that trains in minutes on 2 CPU cores for low-dimensional tasks
    (CartPole, POPGym): d_model 128 x 2 layers, 16x16 latents, 2x256 MLPs (~0.9M params
    with mamba2)."""
    kw: dict[str, Any] = dict(
        backbone=backbone, d_model=128, n_layers=2, stoch=16, classes=16,
        hidden=256, mlp_layers=2, cnn_depth=16, cnn_embed_channels=32,
    )
    if backbone == "mamba2":
        kw["backbone_kwargs"] = {"head_dim": 32}
    kw.update(overrides)
    return WorldModelConfig(**kw)


FREE_BITS_MODES = ("step", "batch")


def free_bits_kl(kl: Tensor, mask: Tensor, free_bits: float, mode: str = "step") -> Tensor:
    """Mean KL over the valid steps with free bits: below `free_bits` nats the KL stops
    pulling. kl, mask: [B, T]. "step" clamps each step's KL before the mean (DreamerV3);
    "batch" clamps the mean once, max(free_bits, mean KL) (Drama's released code)."""
    n_valid = mask.sum().clamp(min=1.0)
    if mode == "batch":
        return ((kl * mask).sum() / n_valid).clamp(min=free_bits)
    return (kl.clamp(min=free_bits) * mask).sum() / n_valid


def count_params(module: nn.Module) -> int:
    """Number of scalars in the parameters of `module` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())


def _is_image(shape: tuple[int, ...]) -> bool:
    """[H, W, C] frames of at least 16x16 go to the CNN (which insists on multiples of 16);
    small grids such as MinAtar's 10x10xC are flattened into the vector MLP."""
    step = 2**N_STAGES
    return len(shape) == 3 and min(shape[0], shape[1]) >= step


def _validate(obs_spec: dict, action_dim: int, cfg: WorldModelConfig) -> None:
    if not obs_spec:
        raise ValueError("obs_spec is empty; pass {key: (shape, dtype)} for each observation")
    for k, v in obs_spec.items():
        if "." in k or not k:
            raise ValueError(f"observation key {k!r} must be non-empty and contain no '.'")
        if not (isinstance(v, (tuple, list)) and len(v) == 2):
            raise ValueError(f"obs_spec[{k!r}] must be (shape, dtype name), got {v!r}")
        if k in ("action", "reward", "terminal", "reset"):
            raise ValueError(f"observation key {k!r} clashes with a batch field; rename it")
    if action_dim <= 0:
        raise ValueError(f"action_dim must be a positive integer, got {action_dim}")
    check_config(cfg)


def check_config(cfg: WorldModelConfig) -> None:
    """The config's own checks (no env needed): also run when a config is built."""
    for name in ("d_model", "n_layers", "stoch", "classes", "hidden", "reward_bins",
                 "cnn_depth", "cnn_embed_channels"):
        if int(getattr(cfg, name)) <= 0:
            raise ValueError(f"imagine.world.{name} must be positive, got {getattr(cfg, name)}")
    if cfg.mlp_layers < 1:
        raise ValueError(f"imagine.world.mlp_layers must be >= 1, got {cfg.mlp_layers}")
    for name in ("kl_dyn", "kl_rep", "free_bits"):
        if float(getattr(cfg, name)) < 0:
            raise ValueError(f"imagine.world.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.free_bits_mode not in FREE_BITS_MODES:
        raise ValueError(f"imagine.world.free_bits_mode must be one of "
                         f"{', '.join(FREE_BITS_MODES)}, got {cfg.free_bits_mode!r}"
                         f"{suggest(cfg.free_bits_mode, FREE_BITS_MODES)}")
    if not 0.0 <= float(cfg.unimix) < 1.0:
        raise ValueError(f"imagine.world.unimix must be in [0, 1), got {cfg.unimix}")
    if int(cfg.prior_layers) < -1:
        raise ValueError(f"imagine.world.prior_layers must be >= 0 (or -1 for mlp_layers), got "
                         f"{cfg.prior_layers}")


class WorldModel(nn.Module):
    """Posterior from the observation alone, backbone over [z_t, a_t], heads on h_t.

    obs_spec: key -> (shape, dtype name). A key whose shape is [H, W, C] with H, W >= 16
    is an image (CNN; uint8 pixels, H and W multiples of 16); every other key is a vector,
    flattened, symlog-ed and concatenated with the other vector keys into one MLP.
    action_dim: number of actions (discrete) or the action size A (continuous).
    Decoded images are channels-last `[..., H, W, C]` floats in [0, 1].
    """

    def __init__(
        self,
        obs_spec: dict[str, tuple[tuple[int, ...], str]],
        action_dim: int,
        discrete: bool,
        cfg: WorldModelConfig,
    ) -> None:
        super().__init__()
        _validate(obs_spec, action_dim, cfg)
        self.action_dim = int(action_dim)
        self.discrete = bool(discrete)
        self.stoch, self.classes = int(cfg.stoch), int(cfg.classes)
        self.unimix_ratio = float(cfg.unimix)
        # prior_sample / posterior_sample by reverie.nets.categorical_kernel (compile=on)
        self.sample_kernel = False
        self.kl_dyn, self.kl_rep = float(cfg.kl_dyn), float(cfg.kl_rep)
        self.free_bits = float(cfg.free_bits)
        self.free_bits_mode = str(cfg.free_bits_mode)
        self.stoch_dim = self.stoch * self.classes
        self.deter_dim = int(cfg.d_model)
        self.feat_dim = self.stoch_dim + self.deter_dim
        shapes = {k: tuple(int(s) for s in v[0]) for k, v in sorted(obs_spec.items())}
        self.image_keys = [k for k, s in shapes.items() if _is_image(s)]
        self.vector_keys = [k for k, s in shapes.items() if not _is_image(s)]
        self.obs_shapes = shapes
        self.vector_sizes = [math.prod(shapes[k]) for k in self.vector_keys]
        hidden, layers = int(cfg.hidden), int(cfg.mlp_layers)
        depth, emb_c = int(cfg.cnn_depth), int(cfg.cnn_embed_channels)

        self.image_encoders = nn.ModuleDict(
            {k: ConvEncoder(shapes[k], depth, emb_c) for k in self.image_keys}
        )
        self.vector_encoder = (
            MLP(sum(self.vector_sizes), None, hidden, layers) if self.vector_keys else None
        )
        embed_dim = sum(e.out_dim for e in self.image_encoders.values())
        embed_dim += self.vector_encoder.out_dim if self.vector_encoder is not None else 0
        self.posterior_head = nn.Linear(embed_dim, self.stoch_dim)
        self.input_proj = nn.Sequential(
            nn.Linear(self.stoch_dim + self.action_dim, self.deter_dim),
            nn.LayerNorm(self.deter_dim),
            nn.SiLU(),
        )
        self.backbone = make_backbone(
            cfg.backbone, d_model=self.deter_dim, n_layers=int(cfg.n_layers),
            options_key="imagine.world.backbone_kwargs", **dict(cfg.backbone_kwargs),
        )
        prior_layers = layers if int(cfg.prior_layers) < 0 else int(cfg.prior_layers)
        self.prior_head = MLP(self.deter_dim, self.stoch_dim, hidden, prior_layers)
        self.reward_head = MLP(self.deter_dim, int(cfg.reward_bins), hidden, layers,
                               zero_init=True)
        self.cont_head = MLP(self.deter_dim, 1, hidden, layers)
        self.image_decoders = nn.ModuleDict(
            {k: ConvDecoder(self.stoch_dim, shapes[k], depth, emb_c) for k in self.image_keys}
        )
        self.vector_decoder = (
            MLP(self.stoch_dim, sum(self.vector_sizes), hidden, layers)
            if self.vector_keys else None
        )
        self.register_buffer("bins", symlog_bins(int(cfg.reward_bins)), persistent=False)

    # -- representation -----------------------------------------------------------------
    def _vectors(self, obs: dict[str, Tensor]) -> Tensor:
        """Concatenated flat vector keys: [..., sum(sizes)] float."""
        parts = []
        for k in self.vector_keys:
            x = obs[k]
            parts.append(x.reshape(*x.shape[: x.dim() - len(self.obs_shapes[k])], -1).float())
        return torch.cat(parts, -1)

    def _check_obs(self, obs: dict[str, Tensor]) -> None:
        missing = [k for k in self.obs_shapes if k not in obs]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; the model was built "
                             f"for {sorted(self.obs_shapes)}")

    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        """Posterior logits (unimix applied): obs [..., *shape] -> [..., stoch, classes]."""
        return self._unimix(self._posterior_head(obs))

    def _posterior_head(self, obs: dict[str, Tensor]) -> Tensor:
        """The posterior head's raw output: obs [..., *shape] -> [..., stoch·classes]."""
        self._check_obs(obs)
        parts = [self.image_encoders[k](obs[k]) for k in self.image_keys]
        if self.vector_encoder is not None:
            parts.append(self.vector_encoder(symlog(self._vectors(obs))))
        return self.posterior_head(torch.cat(parts, -1))

    def _unimix(self, raw: Tensor) -> Tensor:
        """A head's raw output [..., stoch·classes] -> unimix logits [..., stoch, classes]."""
        return unimix(raw.unflatten(-1, (self.stoch, self.classes)), self.unimix_ratio)

    def _sample_head(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """`sample_index(_unimix(raw))` for a head's raw output [..., stoch·classes]: without
        autograd and with `sample_kernel` set (run.compile=on, where the kernel built), in
        one pass over the logits by reverie.nets.categorical_kernel, with the same random
        draws and the same classes up to float rounding at the boundaries between them."""
        raw = full(raw)
        if not (self.sample_kernel and not torch.is_grad_enabled()
                and categorical_kernel.serves(raw)):
            return self.sample_index(self._unimix(raw))
        lead = raw.shape[:-1]
        # one uniform per categorical, drawn as sample_index draws them
        u = torch.rand(lead + (self.stoch, 1), dtype=raw.dtype, device=raw.device)
        idx, onehot = categorical_kernel.unimix_sample(
            raw.reshape(-1, self.classes), u.reshape(-1), self.unimix_ratio)
        return (onehot.view(lead + (self.stoch_dim,)),
                onehot_rows(idx.view(lead + (self.stoch,)), self.classes))

    def sample(self, logits: Tensor) -> Tensor:
        """Straight-through one-hot sample: logits [..., stoch, classes] -> [..., stoch_dim].

        Forward value is an exact one-hot; the gradient is that of the probabilities
        (Bengio et al. 2013; DreamerV2 §2).
        """
        return self.sample_index(logits)[0]

    def sample_index(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """`sample` and the columns of its ones, [..., stoch] long (`onehot_rows`): the
        layers that read z can sum weight columns instead (reverie.nets.onehot)."""
        probs = torch.softmax(logits, -1)
        # inverse-CDF sampling: one uniform per categorical and a compare against the
        # cumulative probabilities, vectorised where torch.multinomial loops over rows
        u = torch.rand(probs.shape[:-1] + (1,), dtype=probs.dtype, device=probs.device)
        below = (probs.cumsum(-1) < u * probs.sum(-1, keepdim=True)).sum(-1, keepdim=True)
        idx = below.clamp(max=self.classes - 1)
        onehot = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
        # (probs - probs.detach()) is exactly 0 forward, so the value stays an exact one-hot
        z = (onehot + (probs - probs.detach())).flatten(-2)
        return z, onehot_rows(idx.squeeze(-1), self.classes)

    def action_input(self, action: Tensor) -> Tensor:
        """Discrete index [...] long -> one-hot [..., A] float; float [..., A] passes through."""
        if not action.is_floating_point():
            if not self.discrete:
                raise ValueError("continuous actions must be float tensors [..., A]")
            return F.one_hot(action.long(), self.action_dim).float()
        if action.shape[-1] != self.action_dim:
            raise ValueError(f"float actions must end in action_dim={self.action_dim}, got "
                             f"shape {tuple(action.shape)}; pass discrete actions as indices")
        return action

    # -- dynamics ---------------------------------------------------------------------
    def backbone_input(self, z: Tensor, action: Tensor, index: Tensor | None = None) -> Tensor:
        """The backbone's input for (z_t, a_t): [..., stoch_dim], [...] or [..., A] -> [..., D].
        `index`: the columns of z's ones (`sample_index`), or None (a dense product)."""
        a = self.action_input(action).to(z.dtype)
        if use_onehot(index, z):
            return self.input_proj[1:](onehot_linear(self.input_proj[0], z, a, index))
        return self.input_proj(torch.cat([z, a], -1))

    def observe(
        self,
        obs: dict[str, Tensor],
        action: Tensor,
        reset: Tensor | None,
        state: State | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor, State]:
        """Encode and run the backbone over a sequence.

        obs: [B, T, ...]; action: [B, T] long or [B, T, A]; reset: [B, T] bool.
        Returns z [B, T, stoch_dim] (posterior samples), h [B, T, deter_dim] (h_t has
        seen z_t and a_t; [B, 1, deter_dim], the last step's, with `last_only`) and the
        backbone state after T steps.
        """
        z, index = self.posterior_sample(obs)
        h, state = self.backbone(self.backbone_input(z, action, index), state, reset,
                                 last_only=last_only)
        return z, h, state

    def imagine_step(
        self, z: Tensor, action: Tensor, state: State, index: Tensor | None = None,
        overwrite: bool = False,
    ) -> tuple[Tensor, State]:
        """One O(1) step: z [B, stoch_dim], action [B] or [B, A] -> h [B, deter_dim];
        `index` as in `backbone_input`; `overwrite`: nothing else holds `state`, whose
        tensors the new state may reuse (`Block.step`)."""
        return self.backbone.step(self.backbone_input(z, action, index), state, overwrite)

    def initial_state(self, batch_size: int) -> State:
        """Zero backbone state for `batch_size` rows (h_{-1} is zeros)."""
        return self.backbone.initial_state(batch_size)

    def reset_state(self, state: State, mask: Tensor) -> State:
        """Rows where `mask: [B] bool` is True return to the initial state."""
        return self.backbone.reset_state(state, mask)

    # -- heads ------------------------------------------------------------------------
    def prior(self, h: Tensor) -> Tensor:
        """Logits of p(z_{t+1} | h_t): h [..., deter_dim] -> [..., stoch, classes]."""
        return self._unimix(self.prior_head(h))

    def use_sample_kernel(self, on: bool) -> None:
        """`prior_sample` and `posterior_sample` by reverie.nets.categorical_kernel (built by
        its `load()`) or by the torch ops."""
        self.sample_kernel = on

    def image_nets(self) -> list[nn.Module]:
        """The conv encoders and decoders (none without image observations)."""
        return [*self.image_encoders.values(), *self.image_decoders.values()]

    def use_image_kernels(self, on: bool) -> None:
        """The conv encoders' pixel scaling, the conv nets' ImageNorm + SiLU and the
        decoders' bias sums by reverie.nets.image_kernel (built by its `load()`), and the
        bf16 weight gradients onto small maps as `cnn.matmul_weight_grad`, or all by the
        torch ops."""
        for net in self.image_nets():
            net.kernels = on

    def prior_sample(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """z_{t+1} ~ p(z | h_t) and the columns of its ones: `sample_index(prior(h))`
        (`_sample_head`: one pass without autograd under run.compile=on)."""
        return self._sample_head(self.prior_head(h))

    def posterior_sample(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """z_t ~ q(z | o_t) and the columns of its ones: `sample_index(encode(obs))`
        (`_sample_head`: one pass without autograd under run.compile=on)."""
        return self._sample_head(self._posterior_head(obs))

    def reward(self, h: Tensor) -> Tensor:
        """Expected reward r̂_t = symexp(E[two-hot bins]): h [..., deter_dim] -> [...]."""
        return two_hot_value(self.reward_head(h), self.bins)

    def cont(self, h: Tensor) -> Tensor:
        """P(episode continues after a_t): h [..., deter_dim] -> [...]."""
        return torch.sigmoid(self.cont_head(h).squeeze(-1))

    def feat(self, z: Tensor, h_prev: Tensor, out: Tensor | None = None) -> Tensor:
        """Actor/critic input cat([z_t, h_{t-1}]): [..., feat_dim] (written into `out`, a
        tensor of that shape, when given)."""
        return torch.cat([z, h_prev], -1, out=out)

    def _decode_raw(self, z: Tensor) -> dict[str, Tensor]:
        """Images centred at 0 [..., H, W, C]; vectors in symlog space [..., *shape]."""
        out = {k: self.image_decoders[k](z) for k in self.image_keys}
        if self.vector_decoder is not None:
            flat = self.vector_decoder(z).split(self.vector_sizes, -1)
            for k, v in zip(self.vector_keys, flat):
                out[k] = v.reshape(*v.shape[:-1], *self.obs_shapes[k])
        return out

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Reconstruction per key from z [..., stoch_dim]: images [..., H, W, C] in [0, 1]
        (clamped), vectors [..., *shape] in observation units."""
        raw = self._decode_raw(z)
        return {k: (v + 0.5).clamp(0.0, 1.0) if k in self.image_encoders else symexp(v)
                for k, v in raw.items()}

    # -- training ---------------------------------------------------------------------
    def _recon_loss(self, z: Tensor, obs: dict[str, Tensor]) -> Tensor:
        """Summed squared error per step: images in [0,1] units, vectors in symlog: [B, T]."""
        raw = self._decode_raw(z)
        loss = torch.zeros(z.shape[:-1], device=z.device)
        for k in self.image_keys:
            # scaled in place on a copy (at Atari's 16 x 128 frames a pass over the 25M
            # pixels is ~15-30 ms); the backward keeps the difference only
            target = obs[k].to(torch.float32, copy=True).div_(255.0).sub_(0.5)
            loss = loss + (raw[k] - target).square().sum(dim=(-3, -2, -1))
        for k in self.vector_keys:
            n = len(self.obs_shapes[k])
            target = symlog(obs[k].float())
            err = (raw[k] - target).pow(2)
            loss = loss + err.reshape(*err.shape[: err.dim() - n], -1).sum(-1)
        return loss

    def loss_terms(
        self, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """`loss` with its metrics as 0-d tensors: a pure tensor function (no `.item()`),
        which `run.compile=on` compiles as a whole, forward and backward."""
        for key in ("action", "reward", "terminal", "reset"):
            if key not in batch:
                raise ValueError(f"world-model batch is missing {key!r}; sample it from replay")
        obs = {k: batch[k] for k in self.obs_shapes if k in batch}
        self._check_obs(obs)
        reset = batch["reset"].bool()
        post = self.encode(obs)  # [B, T, S, K]
        z = self.sample(post)
        h, _ = self.backbone(self.backbone_input(z, batch["action"]), None, reset)

        recon = self._recon_loss(z, obs).mean()
        reward_target = symlog(batch["reward"].float())
        reward_loss = two_hot_loss(self.reward_head(h), reward_target, self.bins).mean()
        cont_target = 1.0 - batch["terminal"].float()
        cont_loss = F.binary_cross_entropy_with_logits(
            self.cont_head(h).squeeze(-1), cont_target
        )

        # KL between p(z_{t+1} | h_t) and q(z_{t+1} | o_{t+1}); no pair across a reset
        prior = self.prior(h[:, :-1])
        post_next = post[:, 1:]
        mask = (~reset[:, 1:]).float()
        n_valid = mask.sum().clamp(min=1.0)
        dyn = categorical_kl(post_next.detach(), prior)  # [B, T-1]
        rep = categorical_kl(post_next, prior.detach())
        dyn_loss = free_bits_kl(dyn, mask, self.free_bits, self.free_bits_mode)
        rep_loss = free_bits_kl(rep, mask, self.free_bits, self.free_bits_mode)
        total = recon + reward_loss + cont_loss + self.kl_dyn * dyn_loss + self.kl_rep * rep_loss

        with torch.no_grad():
            terms = {
                "wm/loss": total,
                "wm/recon": recon,
                "wm/reward": reward_loss,
                "wm/cont": cont_loss,
                "wm/kl": (dyn * mask).sum() / n_valid,
                "wm/kl_dyn": dyn_loss,
                "wm/kl_rep": rep_loss,
                "wm/post_ent": categorical_entropy(post).mean(),
                "wm/prior_ent": categorical_entropy(prior).mean()
                if prior.shape[1] else torch.zeros((), device=h.device),
            }
            terms = {k: v.detach() for k, v in terms.items()}
        return total, terms, {"z": z.detach(), "h": h.detach(), "post": post.detach()}

    def loss(
        self, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """World-model loss on a replay batch of [B, T] sequences (see module docstring).

        Returns (total loss, float metrics "wm/...", {"z", "h", "post"} detached [B, T, ...];
        "post" are the posterior logits [B, T, stoch, classes]).
        """
        total, terms, aux = self.loss_terms(batch)
        return total, {k: v.item() for k, v in terms.items()}, aux

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per top-level part (encoders, posterior head, backbone, heads, ...)."""
        return {name: count_params(m) for name, m in self.named_children()}
