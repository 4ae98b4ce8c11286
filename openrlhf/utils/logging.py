"""One metrics logger per run: JSONL always, tensorboard / wandb when asked.

Made once by the entry point; on ranks other than 0 it is a no-op stand-in, so callers
never test the rank themselves.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from openrlhf.utils.atomic import atomic_write
from openrlhf.utils.errors import require_package

# --logger.wandb.key values that mean "use this machine's wandb login" rather than an API key.
WANDB_USE_LOGIN = ("true", "1")

def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """``cfg``: the --logger.* section (:class:`openrlhf.config.schema.LoggerConfig`)."""

    def __init__(self, output_dir: str, cfg, run_config: Optional[dict] = None, filename: str = "metrics.jsonl") -> None:
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, filename)
        self._tb = None
        self._wandb = None
        if cfg.tensorboard_dir:
            require_package("tensorboard", "tensorboard logging (--logger.tensorboard_dir)")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(cfg.tensorboard_dir)
        if cfg.wandb.key:
            require_package("wandb", "wandb logging (--logger.wandb.key)")
            import wandb

            if cfg.wandb.key.lower() not in WANDB_USE_LOGIN:
                wandb.login(key=cfg.wandb.key)
            self._wandb = wandb.init(
                project=cfg.wandb.project,
                name=cfg.wandb.run_name or None,
                entity=cfg.wandb.org or None,
                group=cfg.wandb.group or None,
                config=run_config,
                reinit=True,
            )

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites what the killed run logged after its checkpoint)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_write(self.path) as f:
            f.writelines(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class NullLogger:
    """Stand-in on ranks other than 0."""

    path = None

    def log(self, step: int, metrics: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(is_rank_0: bool, output_dir: str, cfg, run_config: Optional[dict] = None):
    return MetricsLogger(output_dir, cfg, run_config) if is_rank_0 else NullLogger()
