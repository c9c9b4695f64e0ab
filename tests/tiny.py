"""Config overrides that shrink the world-model agent to test size (shared by the run-level
tests; each adds its own run.* settings)."""

TINY_MODEL = [
    "imagine.world.d_model=32", "imagine.world.hidden=64", "imagine.world.stoch=8",
    "imagine.world.classes=8", "imagine.behavior.actor_hidden=32",
    "imagine.behavior.critic_hidden=32", "imagine.imag_batch=16", "imagine.batch_size=4",
    "imagine.seq_len=16",
]
