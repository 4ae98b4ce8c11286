"""One metrics logger per run: JSONL always, tensorboard / wandb when asked.

Made once by the entry point; on ranks other than 0 it is a no-op stand-in, so callers
never test the rank themselves.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Dict, Optional

from openrlhf.utils.atomic import atomic_write
from openrlhf.utils.errors import require_package
from openrlhf.utils.jsonl import repair_torn_tail

# --logger.wandb.key values that mean "use this machine's wandb login" rather than an API key.
WANDB_USE_LOGIN = ("true", "1")


def dashboard_view(metrics: dict, step: int, loss_name: str = "loss") -> Dict[str, float]:
    """What wandb / TensorBoard get for one metrics.jsonl record: OpenRLHF's keys.

    A training record (keys as in metrics.jsonl) -> ``train/<key>``, with ``train/loss`` OpenRLHF's
    logged loss: the preference loss of DPO-like trainers (our ``loss`` there is the total that is
    backpropagated, sent as ``train/total_loss``); ``train/loss_mean`` / ``train/acc_mean`` (the step's
    means, which ours already are) and, for SFT (``loss_name="gpt_loss"``), ``train/gpt_loss``. An eval
    record (``eval_<key>``) -> ``eval/<key>`` plus OpenRLHF's ``eval/eval_loss`` (the preference loss
    again), ``eval/acc_mean`` and, for SFT, ``eval/eval gpt_loss``. Both carry ``<stage>/global_step``."""
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if numeric and all(k.startswith("eval_") for k in numeric):
        got = {k[len("eval_") :]: v for k, v in numeric.items()}
        out = {f"eval/{k}": v for k, v in got.items()}
        if "preference_loss" in got and "loss" in got:  # as in training: eval/loss is OpenRLHF's loss
            out["eval/loss"], out["eval/total_loss"] = got["preference_loss"], got["loss"]
        loss = got.get("preference_loss", got.get("loss"))
        if loss is not None:
            out["eval/eval_loss"] = loss
            if loss_name != "loss":
                out[f"eval/eval {loss_name}"] = loss
        if "acc" in got:
            out["eval/acc_mean"] = got["acc"]
        out["eval/global_step"] = float(step)
        return out
    out = {f"train/{k}": v for k, v in numeric.items()}
    if "preference_loss" in numeric:
        out["train/loss"] = numeric["preference_loss"]
        out["train/total_loss"] = numeric["loss"]
    if "train/loss" in out:
        out["train/loss_mean"] = out["train/loss"]
        if loss_name != "loss":
            out[f"train/{loss_name}"] = out["train/loss"]
    if "acc" in numeric:
        out["train/acc_mean"] = numeric["acc"]
    out["train/global_step"] = float(step)
    return out


def tensorboard_run_dir(cfg, now: Optional[datetime.datetime] = None) -> str:
    """``<tensorboard_dir>/<run name>``: OpenRLHF's per-run folder; without --logger.wandb.run_name the
    name is OpenRLHF's default form, ``exp_<month><day>T<hour>:<minute>``."""
    name = cfg.wandb.run_name or (now or datetime.datetime.now()).strftime("exp_%m%dT%H:%M")
    return os.path.join(cfg.tensorboard_dir, name)


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """``cfg``: the --logger.* section (:class:`openrlhf.config.schema.LoggerConfig`)."""

    def __init__(
        self,
        output_dir: str,
        cfg,
        run_config: Optional[dict] = None,
        filename: str = "metrics.jsonl",
        lock=None,
    ) -> None:
        """``lock``: the run's :class:`~openrlhf.utils.run_folder.RunLock` on ``output_dir``, released by close()."""
        os.makedirs(output_dir, exist_ok=True)
        self.lock = lock
        self.path = os.path.join(output_dir, filename)
        self._tb = None
        self._wandb = None
        if cfg.tensorboard_dir:
            require_package("tensorboard", "tensorboard logging (--logger.tensorboard_dir)")
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = tensorboard_run_dir(cfg)
            self._tb = SummaryWriter(self.tensorboard_dir)
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
            # OpenRLHF's step axes: train/* against train/global_step, eval/* against eval/global_step.
            for stage in ("train", "eval"):
                self._wandb.define_metric(f"{stage}/global_step")
                self._wandb.define_metric(f"{stage}/*", step_metric=f"{stage}/global_step", step_sync=True)

    def log(self, step: int, metrics: dict, loss_name: str = "loss") -> None:
        """One record: metrics.jsonl gets our names as they are; wandb / TensorBoard get OpenRLHF's
        (:func:`dashboard_view`; ``loss_name``: OpenRLHF's name of the trainer's loss)."""
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None and self._wandb is None:
            return
        view = dashboard_view(record, step, loss_name)
        if self._tb is not None:
            for k, v in view.items():
                if not k.endswith("/global_step"):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(view)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites what the killed run logged after its checkpoint),
        and a torn last line (a run killed while writing it)."""
        if not os.path.exists(self.path):
            return
        if repair_torn_tail(self.path) == "dropped":
            print(f"{self.path}: dropped a torn last line (a killed run's unfinished write)", flush=True)
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_write(self.path) as f:
            f.writelines(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self.lock is not None:
            self.lock.release()


class NullLogger:
    """Stand-in on ranks other than 0."""

    path = None

    def log(self, step: int, metrics: dict, loss_name: str = "loss") -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(is_rank_0: bool, output_dir: str, cfg, run_config: Optional[dict] = None, lock=None):
    return MetricsLogger(output_dir, cfg, run_config, lock=lock) if is_rank_0 else NullLogger()
