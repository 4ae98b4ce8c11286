"""python -m openrlhf.cli.train_dadpo_ray --actor.num_nodes 1 --actor.num_gpus_per_node 8 ...

train_dadpo on a Ray cluster: the policy, the reference and each teacher as groups of Ray actors
(placement groups; --train.colocate_all puts them on the same GPUs), every other flag as train_dadpo's.
Submit it as a job: ray job submit --address http://HEAD:8265 --working-dir . -- python -m
openrlhf.cli.train_dadpo_ray .... The body is :func:`openrlhf.recipes.ray_preference.train_dadpo_ray`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.ray_preference import train_dadpo_ray

        return train_dadpo_ray(cfg)

    run_cli(body, "dadpo_ray", argv)


if __name__ == "__main__":
    main()
