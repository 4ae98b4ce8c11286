"""The GPU check: what a session lent a GPU machine runs first (docs/ray-and-gpu.md "On a GPU machine").

    bash benchmarks/gpu_check.sh                  # every part, within --budget_s (default 560 s)
    bash benchmarks/gpu_check.sh --parts a1,a2    # some of them

Parts, in this order, each with its own time limit and one summary line (PASS / FAIL / SKIPPED and why;
a part that cannot run on this machine is SKIPPED with the reason, never PASS):

  setup  installs the carried wheels (``.whl/``, see docs/ray-and-gpu.md) of packages this Python lacks into a folder of
         their own (--site, /tmp/openrlhf_gpu_site), then records the versions, the GPUs and what imports
  a1     issue 31 item 1 on CUDA: ``pytest tests/test_dtypes.py``, all of it (on a CUDA machine its tests
         train on the GPU; the fp16 ones are marked gpu): the frozen reference's log-probs equal the policy's
         at step 0 and DPO's first loss is ln 2, bf16 at ZeRO 0-3, fp16 at 2 and 3
  a2     the other GPU tests: ``pytest -m gpu tests/test_gpu.py tests/test_lora.py tests/test_openrlhf_flags.py tests/test_actor.py``
  b      packed rows through flash-attention equal padded ones (tests/test_gpu_check.py; needs flash_attn)
  c      two GPUs: ZeRO-3, packing + dynamic batches, killed after a checkpoint, resumed (needs 2 GPUs)
  d      vLLM with tensor parallelism 2 and two engines answers like the hf backend (needs vllm, 2 GPUs)

A test that its own package's absence skips (pytest's skip with a reason) is listed under the part's
"not run"; the part passes only on tests that ran and passed. Writes gpu_check.log (every child's output)
and gpu_check.json (the parts, the device, the versions) under $OUT, else under --out.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (part, seconds it may take, what it runs)
PARTS = [
    ("setup", 120, "install the carried wheels this machine lacks; versions and GPUs"),
    ("a1", 240, "issue 31 item 1 on CUDA: pytest tests/test_dtypes.py (all its tests, on the GPU)"),
    ("a2", 260, "pytest -m gpu tests/test_gpu.py tests/test_lora.py tests/test_openrlhf_flags.py tests/test_actor.py"),
    ("b", 180, "packed + flash-attention equal padded (tests/test_gpu_check.py)"),
    ("c", 300, "two GPUs: ZeRO-3, packing + dynamic batches, save, kill, resume"),
    ("d", 420, "vLLM: tensor parallel 2 and two engines equal the hf backend"),
]
BUDGET = {name: seconds for name, seconds, _ in PARTS}
# Where the carried wheels are installed: kept between calls on a warm machine, and outside $OUT (whose
# files the device tool sends back).
DEFAULT_SITE = "/tmp/openrlhf_gpu_site"

# Python distributions the probe reports, and the module each is imported as.
PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "deepspeed": "deepspeed",
    "accelerate": "accelerate",
    "datasets": "datasets",
    "pytest": "pytest",
    "trl": "trl",
    "flash-attn": "flash_attn",
    "vllm": "vllm",
    "bitsandbytes": "bitsandbytes",
    "liger-kernel": "liger_kernel",
    "peft": "peft",
}

PROBE = r"""
import importlib, json, platform, sys
out = {"python": platform.python_version(), "packages": {}}
for dist, module in json.loads(sys.argv[1]).items():
    try:
        m = importlib.import_module(module)
        out["packages"][dist] = getattr(m, "__version__", "installed")
    except Exception as e:  # a missing package, or one that fails to import here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        out["packages"][dist] = "missing: " + type(e).__name__ + ": " + first[:200]
try:
    import torch
    out["cuda_available"] = torch.cuda.is_available()
    out["cuda"] = torch.version.cuda
    out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as e:
    out["cuda_available"], out["gpus"] = False, []
    out["torch_error"] = str(e)[:200]
print("PROBE " + json.dumps(out))
"""


class Log:
    """Everything to the log file; the lines meant for a reader to stdout as well."""

    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "a", buffering=1)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.f.write(line + "\n")


def _normal(name: str) -> str:
    """A distribution name in its normal form (``Liger_Kernel`` -> liger-kernel)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(wheel: str) -> str:
    """The normalised distribution name of a wheel file (``liger_kernel-0.8.5-py3-...whl`` -> liger-kernel)."""
    return _normal(os.path.basename(wheel).split("-")[0])


def _installed(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def child_env(site: str, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (this process's environment) with the installed wheels' folder (and its scripts, e.g. ninja,
    which DeepSpeed's JIT build calls) first, and the repository importable."""
    env = dict(os.environ if base is None else base)
    paths = [site, REPO] if os.path.isdir(site) else [REPO]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if os.path.isdir(os.path.join(site, "bin")):
        env["PATH"] = os.path.join(site, "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "4")
    return env


def run_child(cmd: List[str], timeout: float, env: Dict[str, str], log: Log) -> Dict:
    """``cmd`` in its own process group, its output appended to the log; ended (the whole group, by its id)
    when ``timeout`` seconds pass. Returns rc (None on timeout), seconds and the output's last lines."""
    log.f.write(f"$ {' '.join(cmd)}\n")
    t0 = time.time()
    out_path = log.path + ".child"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text = open(out_path, errors="replace").read()
    os.remove(out_path)
    log.f.write(text + ("\n" if not text.endswith("\n") else ""))
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "tail": text[-3000:], "output": text}


# ---- setup ---------------------------------------------------------------------------------------------


def _compatible():
    """A test of whether a wheel file's tags suit this interpreter and platform (all pass without packaging)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        try:
            from pip._vendor.packaging.tags import sys_tags
            from pip._vendor.packaging.utils import parse_wheel_filename
        except ImportError:
            return lambda wheel: True
    ours = set(sys_tags())
    return lambda wheel: bool(parse_wheel_filename(os.path.basename(wheel))[3] & ours)


def install_wheels(wheels_dir: str, site: str, log: Log, timeout: float) -> Dict:
    """The wheels of ``wheels_dir`` whose distributions this Python has neither installed nor in ``site``,
    installed into ``site`` (offline, without dependencies: the carried set is complete). ``installed``,
    ``already_here``, and ``failed`` (a reason) when pip failed."""
    wheels = sorted(glob.glob(os.path.join(wheels_dir, "*.whl")))
    result: Dict = {"wheels_dir": wheels_dir, "site": site, "installed": [], "already_here": []}
    if not wheels:
        result["note"] = f"no wheels in {wheels_dir}: nothing installed"
    here = {_normal(d.metadata["Name"]) for d in importlib.metadata.distributions(path=[site])}
    fits = _compatible()
    todo = []
    for w in wheels:
        have = _installed(_dist_name(w)) or ("in " + site if _dist_name(w) in here else None)
        if have:
            result["already_here"].append(f"{_dist_name(w)} {have}")
        elif not fits(w):
            result.setdefault("not_for_this_python", []).append(os.path.basename(w))
        else:
            todo.append(w)
    if todo:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", site, *todo]
        r = run_child(cmd, timeout, dict(os.environ), log)
        if r["rc"] != 0:
            result["failed"] = f"pip install of {len(todo)} wheels failed (rc {r['rc']}): {r['tail'][-300:]}"
            return result
        result["installed"] = [os.path.basename(w) for w in todo]
    return result


def setup(a, log: Log, timeout: float) -> Dict:
    result = install_wheels(a.wheels, a.site, log, timeout)
    if "failed" in result:
        result.update(status="FAIL", reason=result["failed"])
        return result
    todo = result["installed"]
    r = run_child([sys.executable, "-c", PROBE, json.dumps(PACKAGES)], 120, child_env(a.site), log)
    line = next((x for x in r["output"].splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        result.update(status="FAIL", reason=f"the probe failed (rc {r['rc']}): {r['tail'][-300:]}")
        return result
    probe = json.loads(line[len("PROBE ") :])
    result["probe"] = probe
    core = ("torch", "transformers", "deepspeed", "pytest")  # what every part needs (of those probed)
    missing_core = [d for d in core if probe["packages"].get(d, "").startswith("missing")]
    if missing_core:
        result.update(status="FAIL", reason="cannot import " + ", ".join(missing_core))
    elif not probe.get("cuda_available"):
        result.update(status="FAIL", reason="no CUDA GPU visible (torch.cuda.is_available() is False)")
    else:
        result.update(status="PASS", reason=f"{len(probe['gpus'])} x {probe['gpus'][0]}, {len(todo)} wheels installed")
    return result


# ---- pytest parts ------------------------------------------------------------------------------------


def junit_outcomes(path: str) -> Dict[str, List]:
    """passed / failed / skipped test ids (skipped with pytest's reason) from a JUnit XML file."""
    out = {"passed": [], "failed": [], "skipped": []}
    if not os.path.exists(path):
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            out["failed"].append(name)
        elif skipped is not None:
            out["skipped"].append(f"{name} ({skipped.get('message', '').strip()})")
        else:
            out["passed"].append(name)
    return out


def run_pytest(
    a, log: Log, name: str, targets: List[str], timeout: float, deselect: Dict[str, str], k: str = "", marker="gpu"
) -> Dict:
    """``pytest -m <marker> <targets>`` as part ``name``: PASS only when tests ran and none failed; tests
    skipped (with pytest's reason) or deselected (``deselect``: test id -> why) are listed as not run, and a
    part where nothing ran is SKIPPED with those reasons."""
    junit = os.path.join(a.out, f"{name}.junit.xml")
    if os.path.exists(junit):
        os.remove(junit)
    cmd = [sys.executable, "-m", "pytest", *(["-m", marker] if marker else []), *targets, "-q", "-rA"]
    cmd += ["-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}"] + (["-k", k] if k else [])
    for test in deselect:
        cmd += ["--deselect", test]
    r = run_child(cmd, timeout, child_env(a.site), log)
    res = junit_outcomes(junit)
    res["not_run"] = [f"{t} ({why})" for t, why in deselect.items()] + res.pop("skipped")
    res["seconds"] = r["seconds"]
    summary = f"{len(res['passed'])} passed, {len(res['failed'])} failed, {len(res['not_run'])} not run"
    if r["rc"] is None:
        res.update(status="FAIL", reason=f"timed out after {timeout:.0f} s ({summary} when stopped)")
    elif r["rc"] == 5 or (r["rc"] == 0 and not res["passed"] and not res["failed"]):
        why = "; ".join(res["not_run"]) or "pytest selected no gpu-marked test"
        res.update(status="SKIPPED", reason=why)
    elif r["rc"] == 0 and not res["failed"]:
        res.update(status="PASS", reason=summary)
    else:
        failed = ", ".join(t.split("::")[-1] for t in res["failed"]) or f"pytest rc {r['rc']}: {r['tail'][-400:]}"
        res.update(status="FAIL", reason=f"{summary}: {failed}")
    return res


def missing(probe: Dict, dist: str) -> Optional[str]:
    """Why ``dist`` cannot be used here, or None."""
    v = probe.get("packages", {}).get(dist, "missing: not probed")
    return f"{dist} is not importable here ({v[len('missing: ') :]})" if v.startswith("missing") else None


def part_a1(a, log, timeout, probe):
    if not os.path.exists(os.path.join(REPO, "tests", "test_dtypes.py")):
        return {"status": "SKIPPED", "reason": "tests/test_dtypes.py is not in this tree (issue 31's tests)"}
    return run_pytest(a, log, "a1", ["tests/test_dtypes.py"], timeout, {}, marker="")


def part_a2(a, log, timeout, probe):
    deselect = {}
    why = missing(probe, "bitsandbytes")
    if why:
        deselect["tests/test_lora.py::test_4bit_loads_the_base_weights_in_4_bits_on_a_gpu"] = why
    why = missing(probe, "flash-attn")
    if why:
        deselect["tests/test_openrlhf_flags.py::test_attn_auto_is_flash_attention_2_on_a_gpu_with_flash_attn"] = why
    targets = ["tests/test_gpu.py", "tests/test_lora.py", "tests/test_openrlhf_flags.py", "tests/test_actor.py"]
    return run_pytest(a, log, "a2", targets, timeout, deselect)


def part_b(a, log, timeout, probe):
    why = missing(probe, "flash-attn")
    if why:
        return {"status": "SKIPPED", "reason": why}
    return run_pytest(a, log, "b", ["tests/test_gpu_check.py"], timeout, {}, k="flash")


def part_c(a, log, timeout, probe):
    n = len(probe.get("gpus", []))
    if n < 2:
        return {"status": "SKIPPED", "reason": f"needs 2 GPUs, this machine has {n}"}
    return run_pytest(a, log, "c", ["tests/test_gpu_check.py"], timeout, {}, k="two_processes and cuda")


def part_d(a, log, timeout, probe):
    n = len(probe.get("gpus", []))
    why = missing(probe, "vllm") or (f"needs 2 GPUs, this machine has {n}" if n < 2 else None)
    if why:
        return {"status": "SKIPPED", "reason": why}
    return run_pytest(a, log, "d", ["tests/test_gpu_check.py"], timeout, {}, k="vllm")


RUNNERS = {"a1": part_a1, "a2": part_a2, "b": part_b, "c": part_c, "d": part_d}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(p for p, _, _ in PARTS), help="comma-separated, of: setup,a1,a2,b,c,d")
    ap.add_argument("--budget_s", type=float, default=560, help="the whole check's wall-clock limit")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_check", help="log and JSON folder ($OUT)")
    ap.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="the carried wheels")
    ap.add_argument(
        "--site", default=DEFAULT_SITE, help="where the wheels are installed (outside $OUT: it is not sent back)"
    )
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in BUDGET]
    if bad:
        ap.error(f"--parts: unknown part(s) {', '.join(bad)}; choose from {', '.join(BUDGET)}")
    os.makedirs(a.out, exist_ok=True)
    log = Log(os.path.join(a.out, "gpu_check.log"))
    t_start = time.time()
    deadline = t_start + a.budget_s
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": a.budget_s, "parts": []}
    log.say(f"gpu_check: parts {', '.join(parts)}; budget {a.budget_s:.0f} s; log {log.path}")

    probe: Dict = {}
    if "setup" in parts:
        res = setup(a, log, BUDGET["setup"])
        probe = res.get("probe", {})
    else:  # the probe alone (the other parts read it)
        r = run_child([sys.executable, "-c", PROBE, json.dumps(PACKAGES)], 120, child_env(a.site), log)
        line = next((x for x in r["output"].splitlines() if x.startswith("PROBE ")), "PROBE {}")
        probe = json.loads(line[len("PROBE ") :])
        res = None
    report["device"] = probe
    if res is not None:
        res.update(part="setup", seconds=round(time.time() - t_start, 1))
        report["parts"].append(res)
        log.say(f"gpu_check setup {res['status']}: {res['reason']}")
    for name in [p for p in parts if p != "setup"]:
        left = deadline - time.time()
        t0 = time.time()
        if not probe.get("cuda_available"):
            res = {"status": "SKIPPED", "reason": "no CUDA GPU visible (torch.cuda.is_available() is False)"}
        elif left < 60:
            res = {"status": "SKIPPED", "reason": f"the check's budget (--budget_s {a.budget_s:.0f}) left {left:.0f} s"}
        else:
            res = RUNNERS[name](a, log, min(BUDGET[name], left - 5), probe)
        res.update(part=name, seconds=round(time.time() - t0, 1))
        report["parts"].append(res)
        log.say(f"gpu_check {name} {res['status']}: {res['reason']}")
        with open(os.path.join(a.out, "gpu_check.json"), "w") as f:  # after every part: a cut-off run keeps them
            json.dump(report, f, indent=2)
    report["seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    log.say(f"\nsummary ({report['seconds']:.0f} s; {os.path.join(a.out, 'gpu_check.json')}):")
    desc = {p: d for p, _, d in PARTS}
    for r in report["parts"]:
        log.say(f"  {r['part']:5s} {r['status']:7s} {r['reason']}   [{desc[r['part']]}; {r['seconds']:.0f} s]")
    return 1 if any(r["status"] == "FAIL" for r in report["parts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
