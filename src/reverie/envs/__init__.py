from reverie.envs.make import make_env
from reverie.envs.wrappers import ObsSpec, image_keys, main_key, make_obs_spec, vector_width

__all__ = ["make_env", "make_obs_spec", "image_keys", "main_key", "vector_width", "ObsSpec"]
