"""Groups of Ray actors, each actor one process of its group's own torch.distributed (DeepSpeed) world,
placed with Ray placement groups.

``ray`` is imported inside the functions: nothing outside the Ray path imports it.

- :func:`connect` joins the cluster (``--ray.address``, else ``$RAY_ADDRESS``, else a new local one).
- :func:`make_bundles` reserves ``n`` bundles (one GPU each on a GPU cluster, CPUs only on a CPU-only
  cluster) and fails with a message naming the group when the cluster has no room in time.
- :class:`ActorGroup` starts one actor of a :class:`DistWorker` subclass per rank on given bundles,
  points them at one rendezvous (rank 0's node address and a free port there: ``MASTER_ADDR`` /
  ``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE``; ``LOCAL_RANK`` 0, since Ray shows each actor its own
  GPUs only), calls a method on every rank and turns a dead actor into an error naming the group and
  the rank.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from openrlhf.utils.distributed import find_free_port
from openrlhf.utils.errors import UserError


class ActorDied(UserError):
    """A Ray actor of a group died (killed, out of memory, node lost)."""


# Seconds a probe of --ray.address waits for an answer (ray.init itself retries without end).
PROBE_TIMEOUT_S = 10.0


def connect(address: str = "") -> Dict[str, float]:
    """Join the Ray cluster (``address``, else $RAY_ADDRESS, else start one here); returns its resources.
    An address where no Ray cluster answers is a :class:`UserError` within seconds (:func:`probe_cluster`)."""
    import ray

    if not ray.is_initialized():
        if address:
            probe_cluster(address, "--ray.address")
        elif os.environ.get("RAY_ADDRESS"):
            probe_cluster(os.environ["RAY_ADDRESS"], "$RAY_ADDRESS")
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    return dict(ray.cluster_resources())


def probe_cluster(address: str, flag: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that a Ray cluster answers at ``address`` (``HOST:PORT``: the head's GCS port; ``ray://HOST:PORT``:
    a Ray client server) before ``ray.init``, which on an address without a cluster retries for ever. A
    :class:`UserError` naming ``flag`` when the host does not resolve, nothing accepts connections there within
    ``timeout`` seconds, or (GCS address) what answers is not a Ray GCS (e.g. the dashboard's port).
    ``auto`` / ``local`` are left to ``ray.init`` (it fails at once when there is no cluster)."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    host, _, port = (address[len("ray://") :] if client else address).rpartition(":")
    host = host.strip("[]")
    where = f"{flag} {address}: no Ray cluster answers there"
    if not host or not port.isdigit():
        raise UserError(
            f"{flag} {address}: expected HOST:PORT (the head node's GCS port, 6379 unless `ray start "
            "--head --port` said otherwise), ray://HOST:PORT or auto"
        )
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"{where} (the host name does not resolve: {getattr(e, 'strerror', None) or e})") from None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = (
            f"no answer within {timeout:.0f} s"
            if isinstance(e, socket.timeout)
            else f"connecting failed: {e.strerror or e}"
        )
        raise UserError(
            f"{where} ({reason}); start the cluster with `ray start --head` and give its address (HEAD:6379)"
        ) from None
    if client:
        return
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).CheckAlive(
            gcs_service_pb2.CheckAliveRequest(), timeout=timeout
        )
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
        ):
            raise UserError(
                f"{where} (something listens on that port but it is not a Ray GCS: "
                f"{code.name if code else e}); give the head's GCS port (6379 by default), not the "
                "dashboard's (8265)"
            ) from None
        # Any other status (e.g. UNAUTHENTICATED) comes from a GCS: ray.init says what it wants.
    finally:
        channel.close()


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


@dataclass
class Bundles:
    """``count`` reserved bundles of one placement group (``per_bundle``: the resources of each)."""

    group: Any
    count: int
    per_bundle: Dict[str, float]


def make_bundles(what: str, count: int, cpus: float, gpus: float, timeout: float) -> Bundles:
    """Reserve ``count`` bundles of ``cpus`` CPUs and ``gpus`` GPUs (0: none) for ``what`` (a group's name,
    for messages), packed onto as few nodes as possible."""
    import ray
    from ray.util.placement_group import placement_group

    per = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    pg = placement_group([dict(per) for _ in range(count)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise UserError(
            f"the Ray cluster has no room for {what}: {count} bundle(s) of {per} not placed within "
            f"{timeout:.0f} s (--ray.placement_timeout); the cluster has {ray.cluster_resources()}, "
            f"free {ray.available_resources()}"
        )
    return Bundles(pg, count, per)


def free_bundles(*bundles: Optional[Bundles]) -> None:
    import ray

    for b in bundles:
        if b is not None:
            try:
                ray.util.remove_placement_group(b.group)
            except Exception:  # the cluster may already be gone
                pass


class DistWorker:
    """Base of the actors of a group: where it runs, and the torch.distributed environment it joins."""

    def node(self) -> Dict[str, Any]:
        """This actor's node address, a free TCP port there, its process id and its GPUs."""
        import ray

        return {
            "ip": ray.util.get_node_ip_address(),
            "port": find_free_port(),
            "pid": os.getpid(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }

    def join(self, rank: int, world_size: int, master_addr: str, master_port: int, cwd: str = "") -> None:
        """Set the rendezvous of this actor's group; work in the driver's folder ``cwd`` when this node has
        it (relative paths then mean what they mean to the driver)."""
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK="0",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)


class ActorGroup:
    """``size`` actors of ``worker_cls`` (a :class:`DistWorker`) named ``name`` (``policy``,
    ``reference``, ``teacher``, ...), actor r on bundle ``bundle_index[r]`` of ``bundles``, each asking
    for ``num_cpus`` CPUs and ``num_gpus`` GPUs (a share of the bundle's when several groups share it).
    ``rendezvous=False``: independent actors (no shared torch.distributed world, e.g. generation engines)."""

    def __init__(
        self,
        name: str,
        worker_cls,
        size: int,
        bundles: Bundles,
        bundle_index: Sequence[int],
        num_cpus: float,
        num_gpus: float,
        env: Optional[Dict[str, str]] = None,
        rendezvous: bool = True,
    ):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name = name
        remote = ray.remote(worker_cls)
        runtime_env = {"env_vars": dict(env)} if env else None
        self.actors = []
        for rank in range(size):
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=bundles.group, placement_group_bundle_index=int(bundle_index[rank])
            )
            opts: Dict[str, Any] = dict(
                num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy=strategy, max_restarts=0, name=None
            )
            if runtime_env:
                opts["runtime_env"] = runtime_env
            self.actors.append(remote.options(**opts).remote())
        self.nodes: List[Dict[str, Any]] = self.get([a.node.remote() for a in self.actors])
        head = self.nodes[0]
        if rendezvous:
            self.get([a.join.remote(r, size, head["ip"], head["port"], os.getcwd()) for r, a in enumerate(self.actors)])

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, *args, **kwargs) -> List[Any]:
        """Start ``method`` on every rank (same arguments); returns the object refs, rank order."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_each(self, method: str, args_per_rank: Sequence[tuple]) -> List[Any]:
        return [getattr(a, method).remote(*args) for a, args in zip(self.actors, args_per_rank, strict=True)]

    def get(self, refs: Sequence[Any]) -> List[Any]:
        """The results of ``refs`` (one per rank, rank order); a dead actor or a failed call raises at once,
        naming this group and the rank (the other ranks may be blocked in a collective by then)."""
        return wait_groups([(self, list(refs))])[0]

    def kill(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass

    def describe(self) -> List[Dict[str, Any]]:
        return [{"group": self.name, "rank": r, **n} for r, n in enumerate(self.nodes)]


def get_named(ref, who: str) -> Any:
    """``ray.get(ref)``; a dead actor raises :class:`ActorDied`, a failed call :class:`UserError` (for a
    user error in the actor) or RuntimeError, each naming ``who`` (e.g. "the policy group's rank 1 actor")."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayActorError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ActorDied(
            f"{who} died ({type(e).__name__}: {first}); the job stops. Submit it again with "
            "--ckpt.load_enable to resume from the last checkpoint"
        ) from None
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, UserError):
            raise UserError(f"{who}: {cause}") from None
        raise RuntimeError(f"{who} failed:\n{e}") from None


def wait_groups(calls: Sequence[tuple]) -> List[List[Any]]:
    """``calls``: (group, refs one per rank). Waits for all of them, in the order they finish; the first
    failure raises at once (:func:`get_named`), naming the group and the rank. Returns the results per
    call, in order."""
    import ray

    where = {}
    for k, (group, refs) in enumerate(calls):
        for rank, ref in enumerate(refs):
            where[ref] = (k, group.name, rank)
    results: List[List[Any]] = [[None] * len(refs) for _, refs in calls]

    def who(ref) -> str:
        _, name, rank = where[ref]
        return f"the {name} group's rank {rank} actor"

    pending = list(where)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k, _, rank = where[done[0]]
        try:
            results[k][rank] = get_named(done[0], who(done[0]))
        except ActorDied:
            raise
        except Exception as first:
            # A process whose peer died fails its collective soon after: name the dead actor if there is one.
            finished, _ = ray.wait(pending, num_returns=len(pending), timeout=10) if pending else ([], [])
            for ref in finished:
                try:
                    get_named(ref, who(ref))
                except ActorDied:
                    raise
                except Exception:
                    pass
            raise first
    return results
