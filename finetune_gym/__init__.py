"""finetune-gym: RL-Tune's layer-wise learning-rate control of fine-tuning as Gymnasium environments.

Importing the package registers :data:`ENV_IDS` and :data:`TASK_ENV_IDS` with gymnasium.
"""

from . import digits_source  # noqa: F401  (registers the built-in source's "digits" weights)
from .actions import LearningRateMap, learning_rate_steps
from .env import FineTuneEnv
from .layerwise import LayerwiseView
from .registration import ENV_IDS, TASK_ENV_IDS, default_config, make_env, register_envs
from .tasks import FineTuneTasksEnv
from .wrappers import EMAEpisodeWrapper

register_envs()

__version__ = "0.1.0"
__all__ = [
    "ENV_IDS",
    "EMAEpisodeWrapper",
    "FineTuneEnv",
    "FineTuneTasksEnv",
    "LayerwiseView",
    "TASK_ENV_IDS",
    "LearningRateMap",
    "default_config",
    "learning_rate_steps",
    "make_env",
    "register_envs",
]
