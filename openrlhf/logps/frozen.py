"""A frozen model of a preference run: the reference or one teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from openrlhf.models.loss import teacher_name
from openrlhf.utils.served import Endpoint

REF = "ref"
REF_FLAG = "--ref.model_name_or_path"
TEACHER_FLAG = "--teacher.model_name_or_path"


@dataclass(frozen=True)
class FrozenModel:
    """``name``: ``ref`` or a teacher's (``teacher``, ``teacher_2``, ...; the prefix of its metrics and cached
    columns); where it lives (``model_path``) and the flag that named it; whether its weights are offloaded;
    how pairs are tokenised for it: ``renderer`` (a teacher's own tokenizer and chat template; None: the
    policy's tokenisation) and ``max_len`` (None: whole responses, as a teacher scores them; the reference
    is cut to --data.max_len as the policy is); ``served``: the server that answers for it (its weights are
    then never loaded here; ``model_path`` names its tokenizer)."""

    name: str
    model_path: str
    flag: str
    offload: bool = False
    renderer: Any = None
    max_len: Optional[int] = None
    served: Optional[Endpoint] = None

    @property
    def is_teacher(self) -> bool:
        return self.name != REF

    @property
    def own_tokens(self) -> bool:
        """Whether it reads its own tokenisation of a pair (``PairBatch.own[name]``), not the policy's."""
        return self.renderer is not None


def teacher_models(teacher_cfg, renderers: Sequence[Any]) -> List[FrozenModel]:
    """One model per --teacher.model_name_or_path (``teacher``, ``teacher_2``, ...), each with its renderer
    (its own tokenizer and chat template), scoring whole responses; served when --teacher.base_url is set."""
    paths = teacher_cfg.model_name_or_path
    served = Endpoint.of(teacher_cfg, "--teacher.base_url")
    return [
        FrozenModel(teacher_name(k), path, TEACHER_FLAG, teacher_cfg.offload, renderer, served=served)
        for k, (path, renderer) in enumerate(zip(paths, renderers, strict=True))
    ]


def reference_model(ref_cfg, path: str, max_len: int) -> FrozenModel:
    """The reference of ``--ref.*`` at ``path``: scored in the policy's tokenisation, cut to --data.max_len as the
    policy is trained; served when --ref.base_url is set (``path`` then names its tokenizer, the policy's)."""
    served = Endpoint.of(ref_cfg, "--ref.base_url")
    return FrozenModel(REF, path, REF_FLAG, ref_cfg.offload, None, max_len, served=served)
