"""Training on several processes with RecBole's own distributed mode (``torch.distributed``).

:func:`run` mirrors ``recbole.quick_start.run``: ``nproc`` processes on this machine (spawned, one
per GPU, or CPU processes with the gloo backend where there is no GPU), ranks
``group_offset .. group_offset + nproc - 1`` of ``world_size`` processes over all machines, which
meet at ``ip:port`` (rank 0's machine). Each process runs :func:`mind_recbole.run_recbole`, so the
plugin's models, config checks and compatibility shims are there in every worker (RecBole's own
``run`` spawns its own ``run_recbole``, which knows only RecBole's models).

How RecBole trains and evaluates then, unchanged: each process reads the whole dataset, its loaders
take a ``DistributedSampler`` shard with ``train_batch_size / world_size`` rows per step (the
global batch is unchanged), ``DistributedDataParallel`` averages the gradients, rank 0 alone
writes checkpoints and logs at the configured level, and each validation / test metric is the
mean of the ranks' metrics weighted by their evaluation batch counts.

The few RecBole fixes a CPU run needs (the gloo backend instead of a hard-coded nccl, no
``device_ids`` for a CPU module) are in :mod:`mind_recbole.compat`. The helpers below are called by
:func:`mind_recbole.quick_start.run_recbole` and do nothing in a single-process run.
"""

import re

DEFAULT_PORT = "5678"  # RecBole's default


def run(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port=DEFAULT_PORT,
    group_offset=0,
    *,
    evaluate_test=True,
    resume=None,
):
    """Train and test on ``nproc`` local processes (of ``world_size`` in all); rank 0's result.

    Same arguments as ``recbole.quick_start.run`` plus :func:`mind_recbole.run_recbole`'s
    keywords. ``nproc=1`` and ``world_size=-1`` is a plain single-process run. The result is that
    of this machine's first process (as in RecBole; metrics are gathered over all ranks, so every
    machine reports the same). Processes are started with ``spawn``; command-line
    ``--key=value`` overrides reach them through ``sys.argv``.
    """
    from mind_recbole.quick_start import run_recbole

    if nproc == 1 and world_size <= 0:
        return run_recbole(
            model, dataset, config_file_list, config_dict, saved, evaluate_test=evaluate_test, resume=resume
        )
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if world_size == -1:
        world_size = nproc
    if group_offset + nproc > world_size:
        raise ValueError(
            f"ranks {group_offset}..{group_offset + nproc - 1} (group_offset {group_offset}, nproc {nproc}) "
            f"do not fit in world_size {world_size}"
        )
    import torch.multiprocessing as mp

    from mind_recbole.quick_start import build_config

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size, "ip": ip, "port": str(port), "nproc": nproc, "offset": group_offset}
    )
    build_config(model, dataset, config_file_list, config_dict)  # a bad key: one clear error, before spawning
    options = {"saved": saved, "evaluate_test": evaluate_test, "resume": resume}
    try:
        mp.spawn(
            _worker, args=(model, dataset, config_file_list, config_dict, options, queue), nprocs=nproc, join=True
        )
    except mp.ProcessRaisedException as error:
        translated = _worker_error(error)
        if translated is None:
            raise
        raise translated from error
    return None if queue.empty() else queue.get()


# What a worker raised -> what the caller sees (the CLI reports ValueError / FileNotFoundError cleanly).
_WORKER_ERRORS = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "mind_recbole.quick_start.CheckpointError": ValueError,
    "mind_recbole.config.UnknownConfigKeyError": ValueError,
}


def _worker_error(error):
    """A worker's ValueError / FileNotFoundError as the same kind here, its message and rank kept; else None."""
    lines = str(error).strip().splitlines()
    for index in range(len(lines) - 1, -1, -1):  # the last "SomeError: message" line starts the message
        match = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception)): (.*)", lines[index])
        if match:
            kind = _WORKER_ERRORS.get(match.group(1))
            if kind is None:
                return None
            message = "\n".join([match.group(2), *lines[index + 1 :]])
            return kind(f"process {error.error_index} of the distributed run: {message}")
    return None


def _worker(local_rank, model, dataset, config_file_list, config_dict, options, queue):
    """One spawned process: :func:`mind_recbole.run_recbole` as rank ``offset + local_rank``."""
    from mind_recbole.quick_start import run_recbole

    run_recbole(
        model,
        dataset,
        config_file_list,
        {**config_dict, "local_rank": local_rank},
        options["saved"],
        evaluate_test=options["evaluate_test"],
        resume=options["resume"],
        queue=queue,
    )


def is_distributed(config):
    return not config["single_spec"]


def share_cores(config):
    """Unset ``torch_threads`` in a CPU run of several local processes: share the cores among them."""
    from mind_recbole.performance import default_thread_count

    if is_distributed(config) and not config["torch_threads"] and config["device"].type == "cpu":
        config["torch_threads"] = max(1, default_thread_count() // config["nproc"])


def share_checkpoint_file(trainer):
    """Give every rank rank 0's checkpoint path.

    RecBole names the file after the second each process built its trainer, so ranks may name
    different files, and only rank 0 writes; the other ranks' test evaluation would then load a
    file that does not exist.
    """
    if not is_distributed(trainer.config):
        return
    import torch.distributed as dist

    names = [trainer.saved_model_file]
    dist.broadcast_object_list(names, src=0)
    trainer.saved_model_file = names[0]


def wait_for_checkpoint(config):
    """Before the test evaluation loads the best checkpoint: wait until rank 0 has written it."""
    if is_distributed(config):
        import torch.distributed as dist

        dist.barrier()


def finish(config, result, queue, model):
    """End a distributed run: check the ranks' weights agree, end the process group, report.

    ``result["distributed"]`` gets the world size and ``weights_agree`` (every rank ends with the
    same weights, as ``DistributedDataParallel`` promises: a checksum per rank, gathered). Local
    rank 0 hands ``result`` to the parent through ``queue``.
    """
    if not is_distributed(config):
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        checksum = sum(p.detach().double().abs().sum().item() for p in model.parameters())
    checksums = [None] * config["world_size"]
    dist.all_gather_object(checksums, checksum)
    result["distributed"] = {"world_size": config["world_size"], "weights_agree": len(set(checksums)) == 1}
    dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
