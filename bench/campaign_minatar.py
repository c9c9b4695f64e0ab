"""MinAtar, all five games: the world-model agent beside Stable-Baselines3 DQN and PPO at the
same env steps, and DFS vs uniform replay on two games (issue 13's campaign, parts 1 and 4).

    python bench/campaign_minatar.py               # peers, then the reverie sweeps (resumable)
    python bench/campaign_minatar.py --part peers  # SB3 DQN and PPO only
    python bench/campaign_minatar.py --part imagine --games breakout asterix
    python bench/campaign_minatar.py --part uniform  # DFS vs uniform: the uniform runs
    python bench/campaign_minatar.py --report-only # JSON and plot from what has run

How runs are made, archived, evaluated and reported: bench/campaign.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign import Campaign, main  # noqa: E402

# The `minatar` preset sized for this CPU: one world-model + actor-critic update every 8 env
# steps instead of every step (train_ratio 64 with 16 x 32 sequences), a smaller imagination
# batch, and an evaluation of 10 episodes every 2k steps. The preset's own budget (50k env
# steps, one update per step) is more than 17 h per run on one core here; this one took ~50 min per
# run with two runs side by side on the 2 cores (1 thread each).
MINATAR = Campaign(
    name="minatar", suite="minatar", title="MinAtar",
    tasks=("breakout", "asterix", "freeway", "seaquest", "space_invaders"),
    preset="minatar", steps=20_000, eval_every=2_000, eval_episodes=10,
    overrides=("run.train_ratio=64", "imagine.imag_batch=256", "run.eval_every=2000",
               "run.eval_episodes=10", "run.checkpoint_every=2000"),
    peers=("DQN", "PPO"), uniform_tasks=("breakout", "asterix"),
)

if __name__ == "__main__":
    main(MINATAR, __doc__)
