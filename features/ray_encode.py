"""`clipstore embed --ray`: the model forwards in a Ray Data actor pool.

Each actor loads the model once (one replica per GPU, on GPU nodes; CPU replicas otherwise) and
checks that its fingerprint is the driver's: a node with another checkpoint file, another
open_clip or another precision would make other vectors under the same cache key, so it refuses.
An actor call is a whole shard (it reads the stored bytes from the store's shard itself, decodes
and preprocesses them, on a few threads on a GPU node, and runs the same batches through the same
`encode_batch` as the local path) or a whole text part; it returns the raw features, which the
driver normalises and commits in part order with the local path's code. See docs/scale.md."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from clipstore.warehouse import raydata
from clipstore.warehouse.errors import ClipstoreError

CPUS_PER_CPU_REPLICA = 4   # a CPU replica's torch threads: fewer, larger replicas hold fewer model copies
MAX_CPUS_PER_GPU = 8       # a GPU replica's decode threads (plus the model's own thread)


@dataclass
class RayEncoder:
    """The driver's side: the pool's shape and the spec its actors load."""

    spec: object                     # the ModelSpec, as the user gave it (resolved against the store)
    address: str
    size: int
    num_cpus: float
    num_gpus: float
    device: str
    precision: str
    fingerprint: str | None = None   # the driver's model's, which every actor must match

    @classmethod
    def plan(cls, spec, workers: int | None, precision: str | None = None) -> "RayEncoder":
        """One replica per GPU when the cluster has GPUs (unless the spec says --device cpu), else
        CPU replicas of a few cores each (`workers`: how many). The precision is decided here, not
        on each node: it is part of the fingerprint (bf16 on GPUs, fp32 on CPUs, unless the spec
        or the given model says)."""
        import ray
        resources = raydata.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        wants = (spec.device or "").split(":")[0]
        if wants == "cuda" and not gpus:
            raise ClipstoreError(f"--device {spec.device}: the Ray cluster has no GPU", fix="drop --device (CPU "
                                 "replicas), or add GPU nodes to the cluster")
        if wants == "cpu":
            gpus = 0   # CPU replicas on a cluster that has GPUs too
        cpus = max(1, int(resources.get("CPU", 1)))
        node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [cpus]
        if gpus:
            size, num_gpus, device = workers or gpus, 1.0, "cuda"
            num_cpus = float(min(MAX_CPUS_PER_GPU, raydata.gpu_node_cpus_per_gpu()))
        else:
            size = workers or sum(max(1, n // CPUS_PER_CPU_REPLICA) for n in node_cpus)
            num_gpus, device = 0.0, "cpu"
            num_cpus = float(max(1, min(cpus // size, max(node_cpus))))
        precision = precision or spec.precision or ("bf16" if gpus else "fp32")
        return cls(spec, ray.get_runtime_context().gcs_address, size, num_cpus, num_gpus, device, precision)

    def driver_spec(self):
        """The driver loads the model on its CPU, at the actors' precision: the same identity."""
        return replace(self.spec, device="cpu", precision=self.precision)

    def actor_spec(self):
        checkpoint = Path(self.spec.checkpoint).resolve() if self.spec.checkpoint is not None else None
        return replace(self.spec, device=self.device, precision=self.precision, checkpoint=checkpoint)

    def _run(self, work: list[bytes]) -> Iterator[list[tuple[int, np.ndarray]]]:
        rows = [{"key": i, "work": w} for i, w in enumerate(work)]
        decode_threads = max(1, int(self.num_cpus) - 1) if self.num_gpus else max(0, int(self.num_cpus) // 2)
        constructor = {"spec": self.actor_spec(), "fingerprint": self.fingerprint,
                       "threads": max(1, int(self.num_cpus)), "decode_threads": decode_threads}
        for batch in raydata.map_actors(rows, Encoder, constructor=constructor, size=min(self.size, len(rows)),
                                        num_cpus=self.num_cpus, num_gpus=self.num_gpus):
            yield [(int(row["key"]), raydata.loads(row["result"])) for row in batch]

    def images(self, tasks: list, views, batch_size: int, source: str) -> Iterator[list[tuple[int, np.ndarray]]]:
        """Batches of (task index, raw features), one per shard task, as the shards complete."""
        from clipstore.features.embed import ShardTask
        work = [raydata.dumps(("images", (ShardTask(t.index, Path(t.shard).resolve(), [], t.compute), views,
                                          batch_size, source))) for t in tasks]
        for batch in self._run(work):
            yield [(tasks[i].index, features) for i, features in batch]

    def texts(self, chunks: list[list[str]], batch_size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        """Batches of (chunk number, raw features), in chunk order."""
        work = [raydata.dumps(("texts", (chunk, batch_size))) for chunk in chunks]
        done = ([{"part": i, "features": f} for i, f in batch] for batch in self._run(work))
        for batch in raydata.in_order(done, 0):
            yield [(row["part"], row["features"]) for row in batch]


class Encoder:
    """A Ray Data actor: one model replica; called with one shard or text part at a time."""

    def __init__(self, spec, fingerprint: str, threads: int, decode_threads: int):
        import torch
        from clipstore.features.models import load_model
        torch.set_num_threads(threads)
        self.error: ClipstoreError | None = None
        try:
            self.model = load_model(spec)
        except ClipstoreError as exc:
            self.error = exc
            return
        if self.model.fingerprint != fingerprint:
            import socket
            self.error = ClipstoreError(
                f"the model on Ray node {socket.gethostname()} is not the driver's (fingerprint "
                f"{self.model.fingerprint[:12]} vs {fingerprint[:12]}): its vectors would not match the cache key",
                where=str(spec.checkpoint or spec.pretrained or spec.model),
                fix="give every node the same checkpoint file (a shared filesystem), the same open_clip and "
                    "tokenizer, and the same --precision")
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") if decode_threads else None

    def __call__(self, batch: dict) -> dict:
        from clipstore.features.embed import _encode_texts, encode_shard
        rows = []
        for key, work in zip(batch["key"], batch["work"]):
            try:
                if self.error is not None:
                    raise self.error
                kind, payload = raydata.loads(work)
                if kind == "images":
                    task, views, batch_size, source = payload
                    raydata.check_visible(task.shard, "the shard")
                    features = encode_shard(self.model, task, views, batch_size, source, self.pool)
                else:
                    texts, batch_size = payload
                    features = _encode_texts(self.model, texts, batch_size)
                rows.append({"key": int(key), "result": raydata.dumps(features), raydata.ERROR_KEY: None})
            except ClipstoreError as exc:
                rows.append({"key": int(key), **raydata.error_row(exc)})
        return {name: np.array([r[name] for r in rows], dtype=object) for name in ("key", "result", raydata.ERROR_KEY)}
