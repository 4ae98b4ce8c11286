"""A frozen model behind vLLM's OpenAI-compatible server (``vllm serve MODEL``): its sentence log-probs without
its weights in this job.

Each pair side is sent to ``/v1/completions`` as the model's own token ids (the prompt rendered with its own
tokenizer and chat template, then the response), with ``max_tokens`` 1 and vLLM's ``prompt_logprobs`` 0: the
server returns the log-prob of every prompt token given the ones before it, and the response tokens' values
are summed here in float64, as the in-process path sums its own.

What names a served model (its fingerprint): the server's model id, its ``root`` (the weights it loaded) and
``max_model_len``, from ``/v1/models``. Its answer to a fixed probe sequence is kept beside a cache
(:data:`PROBES_FILE`) and compared, within :data:`PROBE_TOLERANCE`, whenever the cache is reused (a resumed
``score_logps``, a training run reading the cached columns), so that another model put behind the same URL and
name is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from openrlhf.utils.errors import DataError, UserError
from openrlhf.utils.jsonl import write_json_atomic
from openrlhf.utils.served import ServedClient

PROBES_FILE = "served_models.json"
# The probe: the same token ids for every model (small ids exist in every vocabulary).
PROBE_IDS = tuple(range(1, 33))
# Mean absolute difference (nats per token) that one served model's probe answers stay within from run to run
# (batch composition, bf16 kernels); another model differs by far more.
PROBE_TOLERANCE = 0.05

Pair = Tuple[float, float]
PairIds = Tuple[Sequence[int], Sequence[int], Sequence[int]]  # prompt, chosen, rejected token ids


def pair_ids(item: dict) -> PairIds:
    """The token ids of a preference dataset item, as the server is asked for them."""
    return item["prompt_ids"], item["chosen_ids"], item["rejected_ids"]


class ServedModel(ServedClient):
    """A served frozen model's log-probs (its fingerprint, the probe, prompt log-probs, pairs scored
    ``concurrency`` at a time)."""

    def fingerprint(self) -> str:
        """What names the served model in a cache's fingerprints (see the module doc)."""
        i = self.info()
        spec = {"served": True, "id": i["id"], "root": i["root"], "max_model_len": i["max_model_len"]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def probe(self) -> List[float]:
        """The log-probs of :data:`PROBE_IDS` after their first token."""
        return [float(x) for x in self.token_logps(list(PROBE_IDS))[1:]]

    # ---- log-probs ------------------------------------------------------------------------------
    def token_logps(self, ids: Sequence[int], stop: Optional[threading.Event] = None) -> List[Optional[float]]:
        """The log-prob of each token of ``ids`` given the ones before it (None for the first); ``stop`` set:
        no (further) request is sent."""
        ids = [int(t) for t in ids]

        resp = self.completion(stop, prompt=ids, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": 0})
        choices = getattr(resp, "choices", None) or []
        got = (choices[0].model_extra or {}).get("prompt_logprobs") if choices else None
        if not isinstance(got, list) or len(got) != len(ids):
            raise UserError(
                f"{self.endpoint.flag} {self.endpoint.base_url}: the server returned no prompt log-probs "
                f"(vLLM's prompt_logprobs) for {self.endpoint.model}; serve the model with vLLM's "
                "OpenAI-compatible server (vllm serve), which returns them"
            )
        out: List[Optional[float]] = [None]
        for t, entry in zip(ids[1:], got[1:], strict=True):
            rec = (entry or {}).get(str(t))
            value = rec.get("logprob") if isinstance(rec, dict) else None
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise UserError(
                    f"{self.endpoint.flag} {self.endpoint.base_url}: no log-prob for prompt token {t} in the "
                    f"server's answer ({str(entry)[:200]})"
                )
            out.append(float(value))
        return out

    def response_sum(
        self, prompt_ids: Sequence[int], response_ids: Sequence[int], stop: Optional[threading.Event] = None
    ) -> float:
        """The response tokens' log-probs after the prompt, summed in float64."""
        values = self.token_logps(list(prompt_ids) + list(response_ids), stop)
        return math.fsum(v for v in values[len(prompt_ids) :] if v is not None)

    def score(
        self,
        pairs: Dict[int, PairIds],
        desc: str,
        on_pair: Callable[[int, Pair], None] = lambda i, p: None,
    ) -> Dict[int, Pair]:
        """{row index: (chosen, rejected)} of ``pairs`` ({row index: (prompt ids, chosen ids, rejected
        ids)}), ``concurrency`` pairs in flight, with a progress bar and a closing tokens/s line named ``desc``;
        ``on_pair`` is called (in this thread) as each pair is done. An interrupt or error sends nothing more
        (requests in flight finish). A row may hold any number of responses after its prompt (one: the
        teacher NLL of an answer); each gets its sum."""
        start = time.perf_counter()
        bar = tqdm(total=len(pairs), desc=f"{desc} (served)", dynamic_ncols=True)

        def done(i: int, pair: Pair) -> None:
            on_pair(i, pair)
            bar.update(1)

        try:
            out = self._score(pairs, done)
        finally:
            bar.close()  # a Ctrl-C message then starts a line of its own
        seconds = time.perf_counter() - start
        tokens = sum(len(p) * len(rs) + sum(map(len, rs)) for p, *rs in pairs.values())
        self.log(
            f"{desc}: {len(pairs)} rows from {self.endpoint.base_url} ({self.info()['id']}) in {seconds:.1f} s: "
            f"{tokens / max(seconds, 1e-9):.0f} tokens/s, {self.retries} retries"
        )
        return out

    def _score(self, pairs: Dict[int, PairIds], on_pair: Callable[[int, Pair], None]) -> Dict[int, Pair]:
        out: Dict[int, Pair] = {}
        stop = threading.Event()  # set on an error or interrupt: a worker starts no new request

        def one(i: int) -> Tuple[int, Optional[Pair]]:
            if stop.is_set():
                return i, None
            p, *responses = pairs[i]
            return i, tuple(self.response_sum(p, r, stop) for r in responses)

        pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency)
        try:
            for fut in as_completed([pool.submit(one, i) for i in pairs]):
                i, pair = fut.result()
                out[i] = pair
                on_pair(i, pair)
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out


# ---- the probe beside a cache -------------------------------------------------------------------------


def _probes_path(folder: str) -> str:
    return os.path.join(folder, PROBES_FILE)


def _load_probes(folder: str) -> dict:
    try:
        with open(_probes_path(folder), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_probe(folder: str, served: ServedModel, replace: bool = False) -> None:
    """Keep the served model's probe answer in ``folder`` (under its fingerprint), for :func:`check_probe`;
    an answer kept already stays unless ``replace``."""
    data = _load_probes(folder)
    fp = served.fingerprint()
    if replace or fp not in data:
        data[fp] = {**served.info(), "base_url": served.endpoint.base_url, "probe": served.probe()}
        write_json_atomic(_probes_path(folder), data)


def check_probe(folder: str, served: ServedModel, what: str) -> None:
    """Refuse (naming ``what``: the cache) when the model served now answers the probe otherwise than the
    one that the cache in ``folder`` was scored with. A cache without a recorded probe is refused too."""
    fp = served.fingerprint()
    kept = _load_probes(folder).get(fp)
    if not isinstance(kept, dict) or not isinstance(kept.get("probe"), list):
        raise DataError(
            f"{what}: no record of the served model's probe in {_probes_path(folder)}: score it again with "
            f"score_logps {served.endpoint.flag} {served.endpoint.base_url}"
        )
    now = served.probe()
    diff = math.fsum(abs(a - b) for a, b in zip(now, kept["probe"], strict=True)) / len(now)
    if diff > PROBE_TOLERANCE:
        raise DataError(
            f"{what}: another model answers at {served.endpoint.flag} {served.endpoint.base_url} as "
            f"{served.endpoint.model!r} than the one the cache was scored with (probe log-probs differ by "
            f"{diff:.3f} nats per token, more than {PROBE_TOLERANCE}); score the data again"
        )


def check_lengths(
    served: ServedModel, pairs: Dict[int, PairIds], what: str, row_name: Callable[[int], str] = lambda i: f"row {i + 1}"
) -> None:
    """Refuse, before any scoring, the rows whose longer side (prompt + response tokens) is longer than the
    server's max_model_len, naming them and the length that fits."""
    limit = served.info().get("max_model_len")
    if not isinstance(limit, int):
        return
    lengths = {i: len(p) + max(len(c), len(r)) for i, (p, c, r) in pairs.items()}
    over = sorted(i for i, n in lengths.items() if n > limit)
    if over:
        shown = ", ".join(f"{row_name(i)} ({lengths[i]} tokens)" for i in over[:5])
        raise DataError(
            f"{what}: {len(over)} pairs are longer than the served model's max_model_len {limit} "
            f"({served.endpoint.flag} {served.endpoint.base_url}): {shown}; serve it with a longer "
            f"--max-model-len or drop those rows"
        )
