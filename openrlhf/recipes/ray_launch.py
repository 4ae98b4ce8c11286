"""Any recipe (train_sft, train_kd, train_dpo, train_kto, score_logps, ...) on one group of Ray actors:
Ray in the role of ``deepspeed --num_gpus N`` (distill's ``launcher: ray`` for the stages that have no
Ray trainer of their own). Each actor is one process of the recipe's DeepSpeed world and runs the
recipe with the same config; the result of rank 0 comes back.
"""

from __future__ import annotations

from typing import Any, Callable

from openrlhf.utils.distributed import destroy_process_group
from openrlhf.utils.ray_group import ActorGroup, DistWorker, cluster_has_gpus, connect, free_bundles, make_bundles


class RecipeWorker(DistWorker):
    def run(self, recipe: Callable, cfg) -> Any:
        result = recipe(cfg)
        destroy_process_group()
        return result


def run_recipe_on_ray(recipe: Callable, cfg, size: int, ray_settings, name: str) -> Any:
    """``recipe`` (a module-level function: each actor imports it) run on ``cfg`` by ``size`` actors (one GPU each on a GPU cluster, else
    ``ray_settings.num_cpus_per_actor`` CPUs) of the cluster at ``ray_settings.address``."""
    connect(ray_settings.address)
    gpus = 1 if cluster_has_gpus() else 0
    label = name
    bundles = make_bundles(
        f"the {label} group", size, ray_settings.num_cpus_per_actor, gpus, ray_settings.placement_timeout
    )
    group = None
    try:
        group = ActorGroup(label, RecipeWorker, size, bundles, range(size), ray_settings.num_cpus_per_actor, gpus)
        return group.get(group.call("run", recipe, cfg))[0]
    finally:
        if group is not None:
            group.kill()
        free_bundles(bundles)
