from reverie.envs.make import make_env
from reverie.envs.wrappers import ObsSpec, make_obs_spec

__all__ = ["make_env", "make_obs_spec", "ObsSpec"]
