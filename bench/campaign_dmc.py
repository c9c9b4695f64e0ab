"""DeepMind Control from proprioceptive state: the world-model agent beside Stable-Baselines3
SAC at the same env steps on cartpole-swingup, reacher-easy and walker-walk (issue 13's
campaign, part 2).

    python bench/campaign_dmc.py                          # SAC, then the reverie sweep
    python bench/campaign_dmc.py --part peers             # SB3 SAC only
    python bench/campaign_dmc.py --part imagine --tasks cartpole-swingup
    python bench/campaign_dmc.py --report-only            # JSON and plot from what has run

How runs are made, archived, evaluated and reported: bench/campaign.py. Env steps are agent
steps: reverie's DMC envs repeat each action twice (DreamerV3's setting), so an episode is
500 steps and 20k steps are 40 episodes, for SAC as for reverie.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign import Campaign, main  # noqa: E402

# The `dmc-proprio` preset sized for this CPU. Its own budget (100k env steps, one update
# every 2 env steps: 48,750 updates) is ~40 h per run on one core here: an update took
# ~2.5-4 s at 1 thread (d_model 256, 16 x 64 sequences, 512 imagined starts x 16 steps),
# measured beside two other single-thread runs. This budget: 20k env steps with one update
# every 16 env steps after the 2,500-step prefill (train_ratio 64: 1,094 updates) and 256
# imagined starts, ~1 h per run at 1 thread, 2 runs side by side.
DMC = Campaign(
    name="dmc", suite="dmc", title="DMC",
    tasks=("cartpole-swingup", "reacher-easy", "walker-walk"),
    preset="dmc-proprio", steps=20_000, eval_every=2_000, eval_episodes=5,
    overrides=("run.train_ratio=64", "imagine.imag_batch=256", "run.eval_every=2000",
               "run.eval_episodes=5", "run.checkpoint_every=2000"),
    peers=("SAC",),
)

if __name__ == "__main__":
    main(DMC, __doc__)
