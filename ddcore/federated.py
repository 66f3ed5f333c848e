"""Subtask ("federated") distillation: split the classes into groups, distill each group on its own,
re-aggregate the results into one synthetic set.

A subtask sees only its classes, with local label ids 0..len(group)-1, so any registered method
(and whatever networks or experts it trains) works on it unchanged. Subtasks run on
`torch.distributed` workers started by `torchrun` (rank r takes subtasks r, r+N, ...), or one after
another in this process when no process group exists. Each subtask is written to
`<out>/subtask_<i>.safetensors` as it finishes and is loaded, not redone, by a later run with the
same parameters; rank 0 then writes `<out>/aggregated.safetensors` and `<out>/federated.json`
(seconds per subtask, peak memory per worker).

    torchrun --nproc_per_node=2 -m ddcore.federated --dataset mnist5k --method dm --ipc 1 \
        --subtasks 2 --out results/fed --iterations 200 --model.width 64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .checks import check_choice, check_int, check_writable_dir
from .data import Dataset, fingerprint, load_dataset
from .distill import distill, method_config
from .io import atomic_write_bytes
from .labels import soft_labels
from .runtime import resolve_device
from .synthetic import SyntheticSet

STRATEGIES = ("contiguous", "random")
AGGREGATED = "aggregated.safetensors"
RECORD = "federated.json"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --- Splitting the classes ---
def split_classes(num_classes: int, num_subtasks: int, strategy: str = "contiguous", seed: int = 0) -> list[list[int]]:
    """Disjoint groups of class ids covering 0..num_classes-1, sizes differing by at most 1.

    'contiguous' gives [0..k), [k..2k), ... as D3 does; 'random' shuffles the classes with `seed`
    first. Each group is sorted, so local label j is the group's j-th smallest class id.
    """
    check_int("num_classes", num_classes, low=1)
    check_int("num_subtasks", num_subtasks, low=1, high=num_classes)
    check_choice("strategy", strategy, STRATEGIES)
    check_int("seed", seed, low=0)
    order = list(range(num_classes))
    if strategy == "random":
        order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    base, extra = divmod(num_classes, num_subtasks)
    groups, start = [], 0
    for k in range(num_subtasks):
        size = base + (k < extra)  # the first `extra` groups take one class more
        groups.append(sorted(order[start : start + size]))
        start += size
    return groups


def subset_classes(dataset: Dataset, classes: list[int]) -> Dataset:
    """The images of `classes` only (train and test), relabelled 0..len(classes)-1 in that order.

    The name is kept on purpose: DSA settings (e.g. no flips for digits) are looked up by name.
    """
    _check_group("classes", classes, dataset.num_classes)
    local = torch.full((dataset.num_classes,), -1, dtype=torch.long)
    local[torch.tensor(classes)] = torch.arange(len(classes))
    keep_train = local[dataset.labels_train] >= 0
    keep_test = local[dataset.labels_test] >= 0
    # replace() keeps every other field of Dataset (mean, std, and any added later)
    return dataclasses.replace(
        dataset,
        images_train=dataset.images_train[keep_train],
        labels_train=local[dataset.labels_train[keep_train]],
        images_test=dataset.images_test[keep_test],
        labels_test=local[dataset.labels_test[keep_test]],
        class_names=[dataset.class_names[c] for c in classes],
    )


def _check_group(name: str, classes, num_classes: int) -> None:
    if not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"{name} must be a non-empty list of class ids, got {classes!r}")
    for c in classes:
        check_int(f"class id in {name}", c, low=0, high=num_classes - 1)
    if len(set(classes)) != len(classes):
        raise ValueError(f"{name} repeats a class id: {list(classes)}")


def subtask_seed(seed: int, index: int) -> int:
    """The seed of subtask `index`: a hash of (seed, index), the same on every worker."""
    digest = hashlib.sha256(f"ddcore.federated:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def subtask_path(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / f"subtask_{index}.safetensors"


# --- One subtask ---
def distill_subtask(
    dataset: Dataset,
    classes: list[int],
    index: int,
    method: str,
    ipc: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    device=None,
    progress: bool = False,
    config=None,
    **options,
) -> SyntheticSet:
    """Distill the classes of one subtask into `<out_dir>/subtask_<index>.safetensors`.

    The method sees `subset_classes(dataset, classes)` and seed `subtask_seed(seed, index)`; its
    labels are local (0..len(classes)-1). A file left by an earlier call with the same parameters
    is loaded instead; a half-finished one resumes from its checkpoint.
    """
    return _distill_or_load(
        dataset,
        classes,
        index,
        method,
        ipc,
        out_dir,
        seed,
        device,
        progress,
        config if config is not None else method_config(method, **options),
    )[0]


def _subtask_key(sub: Dataset, classes, index, method, ipc, seed, cfg) -> dict:
    """Everything a subtask's result depends on, as stored in its file (JSON round-tripped)."""
    key = {
        "index": index,
        "classes": list(classes),
        "method": method,
        "ipc": ipc,
        "base_seed": seed,
        "seed": subtask_seed(seed, index),
        "dataset": sub.name,
        "data": fingerprint(sub),
        "config_repr": repr(cfg),
    }
    return json.loads(json.dumps(key))


def _distill_or_load(
    dataset, classes, index, method, ipc, out_dir, seed, device, progress, cfg
) -> tuple[SyntheticSet, bool]:
    """(the subtask's set, whether it was loaded from an earlier run)."""
    sub = subset_classes(dataset, classes)
    key = _subtask_key(sub, classes, index, method, ipc, seed, cfg)
    path = subtask_path(out_dir, index)
    if path.exists():
        found = SyntheticSet.load(path)
        if found.meta.get("subtask") == key:
            return found, True
        warnings.warn(f"{path} was made with other parameters; distilling subtask {index} again", stacklevel=2)
    # The key's hash in the name: a checkpoint of another split or config is never resumed.
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    ckpt = Path(out_dir) / f"subtask_{index}.{digest}.ckpt"
    start = time.perf_counter()
    syn = distill(
        method, sub, ipc, seed=key["seed"], device=device, progress=progress, checkpoint=ckpt, resume=True, config=cfg
    )
    syn.meta.update(subtask=key, seconds=time.perf_counter() - start)
    syn.save(path)  # atomic: a crash leaves either no file or a whole one
    ckpt.unlink(missing_ok=True)
    return syn, False


# --- Re-aggregation ---
def aggregate(
    results: list[SyntheticSet],
    groups: list[list[int]],
    num_classes: int,
    labeller: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SyntheticSet:
    """One synthetic set with global labels from per-subtask sets with local labels.

    Hard labels j of subtask i become groups[i][j]; soft labels (n, len(groups[i])) are placed in
    the groups[i] columns of (n, num_classes). With a `labeller`, labels become its softmax on the
    images and the class ids are kept in extras['class_ids']. Subtask i's extras are stored as
    extras['subtask_<i>.<name>'] (decoders and priors are per subtask, not per image), its rows
    are the meta['sizes'][i] after those of subtasks 0..i-1, its meta is meta['parts'][i].
    """
    _check_partition(results, groups, num_classes)
    labels = [_global_labels(syn.labels, g, num_classes, i) for i, (syn, g) in enumerate(zip(results, groups))]
    if any(lab.is_floating_point() for lab in labels):  # one kind for the whole set
        labels = [lab if lab.is_floating_point() else _one_hot(lab, num_classes) for lab in labels]
    images, labels = torch.cat([syn.images for syn in results]), torch.cat(labels)
    extras = {f"subtask_{i}.{k}": v for i, syn in enumerate(results) for k, v in syn.extras.items()}
    if labeller is not None:
        extras["class_ids"] = labels.argmax(1) if labels.is_floating_point() else labels
        labels = soft_labels(labeller, images)
        if labels.shape[1] != num_classes:
            raise ValueError(f"the labeller gives {labels.shape[1]} outputs; expected num_classes={num_classes}")
    first = results[0].meta
    meta = {k: first[k] for k in ("method", "dataset", "ipc", "config") if k in first}
    # sizes and parts let a reader cut the set back into subtasks (e.g. to rebuild D3's decoders)
    meta.update(
        num_classes=num_classes,
        groups=[list(g) for g in groups],
        labeller=labeller is not None,
        sizes=[len(syn.images) for syn in results],
        parts=[syn.meta for syn in results],
    )
    return SyntheticSet(images, labels, meta, extras)


def _check_partition(results, groups, num_classes: int) -> None:
    check_int("num_classes", num_classes, low=1)
    if len(results) != len(groups) or not results:
        raise ValueError(
            f"aggregate needs one class group per result: got {len(results)} results and {len(groups)} groups"
        )
    for i, g in enumerate(groups):
        _check_group(f"groups[{i}]", g, num_classes)
    flat = [c for g in groups for c in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"groups must be disjoint; a class id appears twice in {groups}")


def _global_labels(labels: torch.Tensor, group, num_classes: int, i: int) -> torch.Tensor:
    """Local labels of subtask i -> global: ids looked up in `group`, soft columns placed."""
    ids = torch.tensor(list(group))
    if labels.is_floating_point():
        if labels.dim() != 2 or labels.shape[1] != len(group):
            raise ValueError(f"soft labels of subtask {i} must have shape (n, {len(group)}), got {tuple(labels.shape)}")
        placed = torch.zeros(len(labels), num_classes, dtype=labels.dtype)
        placed[:, ids] = labels.cpu()
        return placed
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(group)):
        raise ValueError(
            f"labels of subtask {i} must be local ids in [0, {len(group) - 1}]; got "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    return ids[labels.cpu()]


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).float()


# --- Workers: torch.distributed under torchrun, or this process alone ---
@dataclass
class Workers:
    """Where this process stands: its rank among world_size workers and the device it uses."""

    rank: int
    world_size: int
    device: torch.device
    distributed: bool  # a process group exists
    created: bool = False  # we created it, so we destroy it at the end


def join_workers(device=None, timeout_s: float = 24 * 3600) -> Workers:
    """Use the existing process group, create one from torchrun's variables, or run alone.

    gloo on CPU, nccl on CUDA (each rank on GPU LOCAL_RANK). `timeout_s` bounds how long early
    ranks wait at the final barrier for the slowest subtask: keep it above the longest run.
    """
    device = resolve_device(device)
    distributed = dist.is_available() and (dist.is_initialized() or all(v in os.environ for v in TORCHRUN_ENV))
    if not distributed:
        return Workers(0, 1, device, False)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return Workers(dist.get_rank(), dist.get_world_size(), device, True, created)


def _gather(workers: Workers, record: dict) -> list[dict]:
    """Every worker's record on every worker; also the barrier after the last subtask."""
    if not workers.distributed:
        return [record]
    out = [None] * workers.world_size
    dist.all_gather_object(out, record)
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# --- The whole run ---
def run_federated(
    dataset: str | Dataset,
    method: str,
    ipc: int,
    num_subtasks: int,
    out_dir: str | os.PathLike,
    strategy: str = "contiguous",
    seed: int = 0,
    device=None,
    progress: bool = False,
    global_labeller: Callable | None = None,
    root: str | None = None,
    timeout_s: float = 24 * 3600,
    **options,
) -> SyntheticSet | None:
    """Distill `num_subtasks` class groups on this process's share of the workers and aggregate.

    Parameters
    ----------
    dataset : a registered name (loaded by every worker, from `root`) or a Dataset.
    method, ipc, options : as for `ddcore.distill.distill`, applied to every subtask.
    out_dir : subtask files, aggregated.safetensors and federated.json; with several nodes, a
        folder every node can read and write.
    global_labeller : optional callable from images to logits over all classes; its softmax
        becomes the labels (named so as not to clash with a method's own `labeller` option).

    Returns the aggregated set on rank 0 and None on the other ranks.
    """
    start = time.perf_counter()
    cfg = method_config(method, **options)  # a typo fails here, before any worker starts
    check_writable_dir("out_dir", out_dir)
    workers = join_workers(device, timeout_s)
    try:
        data = load_dataset(dataset, root) if isinstance(dataset, str) else dataset
        groups = split_classes(data.num_classes, num_subtasks, strategy, seed)
        check_int("ipc", ipc, low=1, high=min(len(i) for i in data.indices_per_class("train")))
        if workers.world_size > num_subtasks and workers.rank == 0:
            warnings.warn(f"{workers.world_size} workers for {num_subtasks} subtasks: some stay idle", stacklevel=2)
        done = [
            _timed_subtask(data, groups, i, method, ipc, out_dir, seed, workers.device, progress, cfg)
            for i in range(workers.rank, num_subtasks, workers.world_size)
        ]
        record = {
            "rank": workers.rank,
            "host": socket.gethostname(),
            "subtasks": done,
            "seconds": time.perf_counter() - start,
            "peak_rss_mib": peak_rss_mib(),
        }
        records = _gather(workers, record)
        syn = None
        if workers.rank == 0:
            syn = _aggregate_files(out_dir, groups, data, global_labeller, seed, strategy)
            _write_record(out_dir, data, method, ipc, strategy, seed, cfg, groups, workers, records, start)
        if workers.distributed:
            # Every rank leaves together: a rank that tore gloo down while rank 0 was still
            # aggregating made its peer abort at exit now and then (about 1 launch in 13).
            dist.barrier()
        return syn
    finally:
        if workers.created:
            dist.destroy_process_group()


def _timed_subtask(data, groups, i, method, ipc, out_dir, seed, device, progress, cfg) -> dict:
    """Run (or load) subtask i; its row of federated.json."""
    start = time.perf_counter()
    syn, loaded = _distill_or_load(data, groups[i], i, method, ipc, out_dir, seed, device, progress, cfg)
    return {
        "index": i,
        "classes": groups[i],
        "loaded": loaded,
        "seconds": time.perf_counter() - start,
        "distill_seconds": syn.meta.get("seconds"),
        "peak_rss_mib": peak_rss_mib(),
    }


def _aggregate_files(out_dir, groups, data, labeller, seed, strategy) -> SyntheticSet:
    """Load every subtask file (written by any worker), aggregate and save the result."""
    results = []
    for i in range(len(groups)):
        path = subtask_path(out_dir, i)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing after every worker finished; with several "
                f"nodes, out_dir must be a folder they all share"
            )
        results.append(SyntheticSet.load(path))
    syn = aggregate(results, groups, data.num_classes, labeller)
    syn.meta.update(seed=seed, strategy=strategy, num_subtasks=len(groups))
    syn.save(Path(out_dir) / AGGREGATED)
    return syn


def _write_record(out_dir, data, method, ipc, strategy, seed, cfg, groups, workers, records, start) -> None:
    """federated.json: the run's parameters, each subtask's seconds and each worker's peak memory."""
    subtasks = sorted(
        (dict(row, rank=r["rank"]) for r in records for row in r["subtasks"]), key=lambda row: row["index"]
    )
    record = {
        "dataset": data.name,
        "method": method,
        "ipc": ipc,
        "num_subtasks": len(groups),
        "strategy": strategy,
        "seed": seed,
        "config_repr": repr(cfg),
        "groups": groups,
        "world_size": workers.world_size,
        "device": str(workers.device),
        "backend": dist.get_backend() if workers.distributed else None,
        "wall_seconds": time.perf_counter() - start,
        "subtasks": subtasks,
        "workers": [{k: r[k] for k in ("rank", "host", "seconds", "peak_rss_mib")} for r in records],
    }
    atomic_write_bytes(Path(out_dir) / RECORD, json.dumps(record, indent=1).encode())


def load_record(out_dir: str | os.PathLike) -> dict:
    """The federated.json that run_federated wrote in `out_dir`."""
    return json.loads((Path(out_dir) / RECORD).read_text())


def subtask_ids(labels: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """The index of the group (subtask) holding each label, (n,) int64: as `test_groups` of
    evaluate_synthetic it gives the accuracy on each subtask's classes. Soft labels: their argmax."""
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError(f"groups must be a non-empty list of class groups, got {groups!r}")
    for i, g in enumerate(groups):
        _check_group(f"groups[{i}]", g, 2**31 - 1)
    flat = [c for g in groups for c in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"groups must be disjoint; a class id appears twice in {groups}")
    lookup = torch.full((max(flat) + 1,), -1, dtype=torch.long)  # class id -> its group
    for i, g in enumerate(groups):
        lookup[torch.tensor(g)] = i
    labels = (labels.argmax(1) if labels.is_floating_point() else labels).cpu()
    known = (labels >= 0) & (labels < len(lookup))
    ids = torch.full_like(labels, -1)
    ids[known] = lookup[labels[known]]
    if (ids < 0).any():
        raise ValueError(f"labels {sorted(set(labels[ids < 0].tolist()))} are in no group of {groups}")
    return ids


# --- Launching a run under torchrun from Python (notebooks, scripts) ---
CLI_FLAGS = ("progress",)  # options of main() given without a value
CLI_OPTIONAL = ("root",)  # options of main() left out when None (their default)
_AGENT_LOG = re.compile(r"^[EWI]\d{4} .*torch/distributed/", re.MULTILINE)


def torchrun_command(options: dict, nproc: int, out_dir: str | os.PathLike) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m ddcore.federated ...`.

    `options` holds main()'s options (dataset, method, ipc, subtasks, seed, device, ...) and the
    method's options under their command-line names, '_' or '-' alike; a dot or a nested dict
    reaches into a nested config: {'experts.model.width': 16} == {'experts': {'model': {'width': 16}}}.
    Values: str, int, float, bool (true/false) or None (none; for 'root': left out, i.e. its
    default); True/False for the flag 'progress'.
    The interpreter running this code runs torchrun, so no PATH lookup is involved.
    """
    check_int("nproc", nproc, low=1)
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict of command-line options, got {type(options).__name__}")
    args = []
    for key, value in _flatten(options).items():
        name = key.replace("_", "-")
        if name == "out":
            raise ValueError("give the output folder as out_dir, not as an option")
        if name in CLI_OPTIONAL and value is None:
            continue
        if name in CLI_FLAGS:
            if not isinstance(value, bool):
                raise TypeError(f"option {key!r} is a flag: True or False, got {value!r}")
            args += [f"--{name}"] if value else []
        else:
            args += [f"--{name}", _cli_value(key, value)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "ddcore.federated",
        "--out",
        str(out_dir),
        *args,
    ]


def _flatten(options: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"option names must be non-empty strings, got {key!r}")
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _cli_value(key: str, value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(
        f"option {key!r} must be a str, int, float, bool or None on the command line, got "
        f"{type(value).__name__}; set a nested config field by field, e.g. 'model.width'"
    )


def clear_run(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what run_federated writes in `out_dir` (subtask files and checkpoints, experts,
    labellers, the aggregate and the record) and nothing else; the paths deleted."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    patterns = ("subtask_*.safetensors", "subtask_*.ckpt", "labeller_*.safetensors", "experts_*", AGGREGATED, RECORD)
    found = sorted({p for pattern in patterns for p in out.glob(pattern)})
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found


def launch_torchrun(
    options: dict,
    nproc: int,
    out_dir: str | os.PathLike,
    threads: int = 1,
    fresh: bool = False,
    timeout_s: float | None = None,
) -> dict:
    """Run `python -m ddcore.federated` under torchrun with `nproc` workers in a subprocess and
    return the federated.json it wrote (see torchrun_command for `options`).

    Every worker gets OMP_NUM_THREADS=threads. fresh=True first deletes the files of an earlier
    run in out_dir (clear_run), so the run does all its work and its times measure that; with
    fresh=False finished subtasks are loaded, not redone. The record gains `launch_seconds`, the
    command's wall time seen from here (process start-up and imports included), `load_average`,
    the machine's 1-minute load average when it ended (other work competing for the cores), and
    `command`.
    Raises RuntimeError with the exit status and the end of the command's output when it fails
    or runs past `timeout_s` (its whole process group is then stopped).
    """
    check_int("threads", threads, low=1)
    cmd = torchrun_command(options, nproc, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if fresh:
        clear_run(out_dir)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    # A session of its own: on a timeout the workers are stopped with torchrun, not orphaned.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        raise RuntimeError(
            f"torchrun ran past timeout_s={timeout_s}: {shlex.join(cmd)}\n{_failure_report(stderr)}"
        ) from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with status {proc.returncode}: {shlex.join(cmd)}\n{_failure_report(stderr)}"
        )
    record = load_record(out_dir)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    record.update(launch_seconds=seconds, load_average=load, command=shlex.join(cmd))
    return record


def _failure_report(stderr: str, chars: int = 3000) -> str:
    """The end of what the workers wrote to stderr, then the end of torchrun's own report."""
    agent = _AGENT_LOG.search(stderr)  # torchrun's log lines follow the workers' output
    workers = stderr[: agent.start()] if agent else stderr
    return (
        f"--- the workers' stderr (end) ---\n{workers[-chars:]}\n"
        f"--- torchrun's report (end) ---\n{stderr[-chars // 3 :]}"
    )


# --- Command line ---
def parse_method_options(method: str, args: list[str]) -> dict:
    """Method options from '--name value' pairs, typed like the method's config fields.

    Dashes become underscores; a dot reaches into a nested config ('--model.width 8'); 'none'
    sets an optional field to None.
    """
    if len(args) % 2:
        raise ValueError(f"method options come in '--name value' pairs, got {args}")
    defaults, options = method_config(method), {}
    for flag, text in zip(args[::2], args[1::2]):
        if not flag.startswith("--"):
            raise ValueError(f"expected an option name starting with '--', got {flag!r}")
        path = flag[2:].replace("-", "_").split(".")
        options[path[0]] = _set_field(defaults, path, text, options.get(path[0]), method)
    return options


def _set_field(parent, path: list[str], text: str, current, owner: str):
    """The new value of field path[0] of the dataclass `parent`, from `text` (recursing on dots)."""
    hints = typing.get_type_hints(type(parent))
    if path[0] not in hints:
        raise TypeError(f"{owner} has no option {path[0]!r}; its options are {sorted(hints)}")
    hint = hints[path[0]]
    if len(path) == 1:
        return _coerce(".".join([owner, path[0]]), text, hint)
    value = current if current is not None else getattr(parent, path[0])
    if value is None:  # an optional nested config, e.g. robust: start from its defaults
        value = next(t for t in typing.get_args(hint) if dataclasses.is_dataclass(t))()
    if not dataclasses.is_dataclass(value):
        raise TypeError(f"{owner}.{path[0]} has no fields to set with a dot")
    new = _set_field(value, path[1:], text, None, f"{owner}.{path[0]}")
    return dataclasses.replace(value, **{path[1]: new})


def _coerce(name: str, text: str, hint):
    """`text` as a value of type `hint` (bool, int, float, str, or one of them | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() == "none":
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if hint not in (int, float, str):
        raise ValueError(f"{name} cannot be set from the command line (type {hint})")
    try:
        return hint(text)
    except ValueError:
        raise ValueError(f"{name} takes a value of type {hint.__name__}, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """`python -m ddcore.federated ...`, alone or under torchrun; unknown flags are method options."""
    parser = argparse.ArgumentParser(
        prog="python -m ddcore.federated",
        description=__doc__.split("\n")[0],
        epilog="Other --name value pairs are options of the method, e.g. --iterations 200 --model.width 64.",
    )
    parser.add_argument("--dataset", default="mnist5k", help="registered data set name")
    parser.add_argument("--root", default=None, help="data folder, for data sets read from disk")
    parser.add_argument("--method", default="dm", help="registered distillation method")
    parser.add_argument("--ipc", type=int, default=1, help="images per class")
    parser.add_argument("--subtasks", type=int, default=2, help="number of class groups")
    parser.add_argument("--strategy", default="contiguous", choices=STRATEGIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (shared by all nodes)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--progress", action="store_true", help="show each subtask's progress bar")
    parser.add_argument(
        "--timeout-minutes", type=float, default=24 * 60, help="how long finished workers wait for the others"
    )
    args, extra = parser.parse_known_args(argv)
    try:
        pairs = [s for a in extra for s in (a.split("=", 1) if a.startswith("--") else [a])]  # --k=v too
        options = parse_method_options(args.method, pairs)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    syn = run_federated(
        args.dataset,
        args.method,
        args.ipc,
        args.subtasks,
        args.out,
        args.strategy,
        args.seed,
        args.device,
        args.progress,
        root=args.root,
        timeout_s=args.timeout_minutes * 60,
        **options,
    )
    if syn is not None:
        print(f"{syn} -> {Path(args.out) / AGGREGATED}")


if __name__ == "__main__":
    main()
