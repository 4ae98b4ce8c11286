"""The served generation backend (``--generate.backend served``): answers from a model behind vLLM's
OpenAI-compatible server (``vllm serve MODEL``), so that a teacher too large for this job's GPUs answers where it
is served.

Each prompt is sent to ``/v1/completions`` as the token ids the recipe rendered (``--model.model_name_or_path``'s
tokenizer and chat template, as for the hf and vllm backends), with its own sampling (temperature,
max_new_tokens, the seed of a sampled prompt), the run's top_p / top_k, the stop token ids, and
``repetition_penalty`` 1 (the server would otherwise apply the model's generation_config, which the other
backends do not); vLLM's ``return_token_ids`` gives the answer's token ids back, which the recipe cuts and
decodes as it does the other backends'. ``--served.concurrency`` prompts are in flight at once; finished answers
come back in chunks of ``--generate.batch_size`` (each chunk is appended to the output file as it comes)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator, List, Optional, Sequence, Tuple

from openrlhf.generation.sampling import Sampling
from openrlhf.generation.vllm_backend import Item, Result, make_items
from openrlhf.utils.errors import UserError
from openrlhf.utils.served import Endpoint, ServedClient


class ServedGenerator:
    """``.run(prompt ids, sampling)`` yields chunks ``[(position, token ids, finish reason)]`` from the server."""

    def __init__(self, endpoint: Endpoint, decoding, stop_ids: Sequence[int], log=print):
        self.client = ServedClient(endpoint, log)
        self.endpoint = endpoint
        self.decoding = decoding  # --generate.*: the run's settings, top_p, top_k, batch_size
        self.stop_ids = [int(t) for t in stop_ids]

    def max_model_len(self) -> Optional[int]:
        """The served model's context (``/v1/models``), None when the server does not say."""
        return self.client.info().get("max_model_len")

    def run(
        self, prompt_ids: Sequence[Sequence[int]], sampling: Optional[Sequence[Sampling]] = None
    ) -> Iterator[List[Result]]:
        items = make_items(prompt_ids, sampling)
        if not items:
            return
        self.client.info()  # a server that is down or serves another model: one clear line before any prompt
        stop = threading.Event()
        chunk: List[Result] = []
        pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency)
        try:
            futures = [pool.submit(self._answer, item, stop) for item in items]
            for fut in as_completed(futures):
                chunk.append(fut.result())
                if len(chunk) >= self.decoding.batch_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        except BaseException:
            stop.set()  # no request is sent after an error or an interrupt (those in flight finish)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    def close(self) -> None:
        self.client.close()

    def _answer(self, item: Item, stop: threading.Event) -> Result:
        pos, ids, sampling = item
        d = self.decoding
        s = sampling or Sampling(d.temperature, d.max_new_tokens)
        extra = {
            "top_k": d.top_k,
            "stop_token_ids": self.stop_ids,
            "return_token_ids": True,
            "repetition_penalty": 1.0,
        }

        resp = self.client.completion(
            stop,
            prompt=list(ids),
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=d.top_p,
            seed=s.seed,
            extra_body=extra,
        )
        token_ids, finish = _answer_of(resp)
        if token_ids is None:
            ep = self.endpoint
            raise UserError(
                f"{ep.flag} {ep.base_url}: the server returned no token ids for its answer (vLLM's return_token_ids) "
                f"from {ep.model}; serve the model with vLLM's OpenAI-compatible server (vllm serve, 0.10.2 or newer)"
            )
        return pos, token_ids, finish


def _answer_of(resp) -> Tuple[Optional[List[int]], Optional[str]]:
    """(token ids, finish reason) of a completion: ``choices[0].token_ids`` (vLLM's return_token_ids)."""
    choices = getattr(resp, "choices", None) or []
    if not choices:
        return None, None
    choice = choices[0]
    ids = getattr(choice, "token_ids", None)
    if ids is None:
        ids = (choice.model_extra or {}).get("token_ids")
    if not isinstance(ids, list):
        return None, None
    finish = choice.finish_reason if choice.finish_reason in ("stop", "length") else None
    return [int(t) for t in ids], finish
