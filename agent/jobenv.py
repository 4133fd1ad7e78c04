"""A job's environment, built from a clean base: nothing of the agent's own environment.

The agent's environment is the agent's (its service unit's settings, maybe secrets, a PATH
that may name folders a job's user should not run from); a job gets, in this order:

1. a login-like base: PATH (the agent's --job-path), HOME, USER, LOGNAME and SHELL from the
   user's passwd entry, LANG=C.UTF-8;
2. the job's own env, which may change any of those;
3. the scheduler's word, which the job's env may not change: the GPU assignment and the
   SCHEDULERD_* identity (SCHEDULERD_ARRAY_* for an array's element), and for an
   elastic worker its contract (docs/elastic.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.model import JobSpec
from agent.users import JobUser

DEFAULT_JOB_PATH = "/usr/local/bin:/usr/bin:/bin"


def job_env(
    spec: JobSpec,
    user: JobUser,
    job_path: str,
    node: str,
    gpus: tuple[int, ...],
    worker_id: int,
    join: bool,
) -> dict[str, str]:
    env = {
        "PATH": job_path,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": user.shell or "/bin/sh",  # an empty passwd field means the Bourne shell
        "LANG": "C.UTF-8",
    }
    env.update(spec.env)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
            # CUDA's default order (fastest first) may differ from NVML's (PCI bus), and
            # the indices we hand out are NVML's.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "SCHEDULERD_JOB_ID": str(spec.job_id),
            "SCHEDULERD_ATTEMPT": str(spec.attempt),
            "SCHEDULERD_CONSUMER": spec.consumer,
            "SCHEDULERD_USER": spec.user,
            "SCHEDULERD_JOB_NAME": spec.name,
            "SCHEDULERD_NODE": node,
            "SCHEDULERD_NODE_RANK": str(spec.node_rank),
            "SCHEDULERD_NUM_NODES": str(spec.num_nodes),
            "SCHEDULERD_GPUS": str(len(gpus)),
        }
    )
    if spec.array_id:  # an element of a job array (docs/arrays.md), as Slurm's
        env["SCHEDULERD_ARRAY_JOB_ID"] = str(spec.array_id)
        env["SCHEDULERD_ARRAY_INDEX"] = str(spec.array_index)
    if spec.master_address:
        host, _, port = spec.master_address.rpartition(":")
        env.update({"MASTER_ADDR": host.strip("[]"), "MASTER_PORT": port})
    elastic = spec.elastic
    if elastic is not None:  # docs/elastic.md: the contract with the workers
        # One process per GPU: like torchrun, one CPU thread each unless the job
        # says otherwise (N workers x all cores each thrash a CPU box).
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(
            {
                "SCHEDULERD_ELASTIC": "1",
                "SCHEDULERD_WORKER_ID": str(worker_id),
                "SCHEDULERD_ELASTIC_INITIAL": ",".join(map(str, elastic.initial_worker_ids)),
                "SCHEDULERD_ELASTIC_JOIN": "1" if join or elastic.join else "0",
                "SCHEDULERD_ELASTIC_STORE": elastic.store_address,
                "SCHEDULERD_ELASTIC_MIN": str(elastic.min),
                "SCHEDULERD_ELASTIC_MAX": str(elastic.max),
            }
        )
    return env


def env_problem(env: Mapping[str, str]) -> str:
    """Why the job's env cannot be an environment (START_FAILED), or "" if it can: execve
    takes NAME=VALUE strings ending in NUL, so a name may hold neither '=' nor NUL, nor a
    value NUL."""
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            return f"env: {name!r} is not a variable name"
        if "\0" in value:
            return f"env: the value of {name} holds a NUL character"
    return ""
