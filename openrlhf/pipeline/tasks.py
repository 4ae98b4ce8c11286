"""Which function runs each task of :data:`openrlhf.config.schema.REGISTRY` (the pipeline's stages, and
``launcher: ray``'s actors): one explicit table, each function imported when it is asked for."""

from typing import Callable


def runner_of(task: str) -> Callable:
    """The function that runs ``task`` (a name of :data:`openrlhf.config.schema.REGISTRY`) on its config,
    imported now: importing this module imports no recipe (nor torch), so planning stays light."""
    if task == "sft":
        from openrlhf.recipes.sft import train_sft as fn
    elif task == "kd":
        from openrlhf.recipes.kd import train_kd as fn
    elif task == "dpo":
        from openrlhf.recipes.dpo import train_dpo as fn
    elif task == "dadpo":
        from openrlhf.recipes.dadpo import train_dadpo as fn
    elif task == "kto":
        from openrlhf.recipes.kto import train_kto as fn
    elif task == "dpo_ray":
        from openrlhf.recipes.ray_preference import train_dpo_ray as fn
    elif task == "dadpo_ray":
        from openrlhf.recipes.ray_preference import train_dadpo_ray as fn
    elif task == "score_logps":
        from openrlhf.recipes.score import score_logps as fn
    elif task == "generate":
        from openrlhf.recipes.generate import generate as fn
    elif task == "prune":
        from openrlhf.tools.prune import prune as fn
    elif task == "judge":
        from openrlhf.eval.run import judge as fn
    else:
        raise KeyError(f"unknown task {task!r}")
    return fn
