"""Rank helpers for training on several processes with RecBole's distributed mode (``torch.distributed``).

:func:`mind_recbole.quick_start.run` mirrors ``recbole.quick_start.run``: ``nproc`` processes on this
machine (spawned, one per GPU, or CPU processes with the gloo backend where there is no GPU), ranks
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
``device_ids`` for a CPU module) are in :mod:`mind_recbole.compat`. The helpers below do nothing
in a single-process run; of the package this module imports only :mod:`mind_recbole.runtime_settings`.
"""


def rank(config):
    """This process's rank over all machines (0 in a single-process run)."""
    return 0 if config["single_spec"] else config["local_rank"] + config["offset"]


def world_size(config):
    return 1 if config["single_spec"] else config["world_size"]


def gather_over_ranks(config, value):
    """``[value]`` in a single process; every rank's value (rank order) in a distributed run."""
    if config["single_spec"]:
        return [value]
    import torch.distributed as dist

    values = [None] * config["world_size"]
    dist.all_gather_object(values, value)
    return values


def is_distributed(config):
    return not config["single_spec"]


def share_cores(config):
    """Unset ``torch_threads`` in a CPU run of several local processes: share the cores among them."""
    from mind_recbole.runtime_settings import default_thread_count

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
