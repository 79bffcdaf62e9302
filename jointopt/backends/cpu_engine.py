"""How vLLM's CPU engine should run on this machine, chosen from the hardware.

The CPU build of vLLM is fast only when its settings fit the processor:

* **dtype** — bfloat16 weights run at full speed only on CPUs with BF16 instructions
  (``avx512_bf16`` or ``amx_bf16``); elsewhere vLLM emulates them and generates about
  5x slower than with float32 (measured on an AVX2-only AMD EPYC: 31 vs 160-170
  generated tok/s for SmolLM2-135M). Model folders converted from GGUF declare
  bfloat16, so vLLM's ``dtype="auto"`` picks the slow path on such CPUs.
* **threads** — vLLM binds one OpenMP thread per core it is given
  (``VLLM_CPU_OMP_THREADS_BIND``) and, unless told otherwise, keeps one core for itself.
* **KV cache** — ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB) is taken from RAM up front.

:func:`read_cpu_info` reads the processor (``/proc/cpuinfo``, ``/proc/meminfo``, the
process's CPU affinity); :func:`choose_cpu_engine` turns it plus the user's overrides
into a :class:`CpuEngineChoice`: the dtype, the environment for the engine process, and
a one-line description that the study logs and records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jointopt.errors import BackendError

__all__ = [
    "CpuEngineChoice",
    "CpuEngineSettings",
    "CpuInfo",
    "choose_cpu_engine",
    "cpu_list",
    "parse_cpu_list",
    "read_cpu_info",
]

#: Flags that mean the CPU computes bfloat16 natively (x86; ``bf16`` on Arm).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: KV-cache size chosen when the user sets none: a tenth of RAM, within these bounds.
KV_MIN_GIB, KV_MAX_GIB = 1, 8


@dataclass(frozen=True)
class CpuInfo:
    """What the engine's speed depends on, read from the machine."""

    model_name: str
    """The processor's name (``/proc/cpuinfo`` ``model name``)."""
    flags: frozenset[str]
    """Instruction-set flags (``/proc/cpuinfo`` ``flags``)."""
    cpus: tuple[int, ...]
    """Logical CPUs this process may run on (its affinity mask)."""
    memory_gib: float
    """Total RAM in GiB."""
    mhz: float | None = None
    """Current clock of the first CPU in MHz, when reported."""

    @property
    def has_bf16(self) -> bool:
        """Whether the CPU has native bfloat16 arithmetic."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def isa(self) -> str:
        """The widest vector instruction set, e.g. ``"AVX-512"`` or ``"AVX2"``."""
        if "amx_bf16" in self.flags:
            return "AMX"
        if "avx512f" in self.flags:
            return "AVX-512"
        if "avx2" in self.flags:
            return "AVX2"
        if "asimd" in self.flags or "neon" in self.flags:
            return "NEON"
        return "no AVX2"

    def describe(self) -> str:
        """``"AVX2 CPU without BF16"`` style summary."""
        return f"{self.isa} CPU {'with' if self.has_bf16 else 'without'} BF16"

    def vector_flags(self) -> list[str]:
        """The flags that matter for the engine (AVX*, AMX, FMA, VNNI), sorted."""
        wanted = re.compile(r"^(avx[0-9a-z_]*|amx[0-9a-z_]*|fma|f16c|asimd|sve[0-9]*|bf16)$")
        return sorted(flag for flag in self.flags if wanted.match(flag))


@dataclass(frozen=True)
class CpuEngineSettings:
    """The user's overrides; ``None`` everywhere means "choose from the hardware"."""

    dtype: str | None = None
    """Weight dtype: ``bfloat16``, ``float32``, ``float16`` or ``auto`` (the model's own)."""
    threads: int | None = None
    """How many cores the engine's OpenMP threads are bound to (the first ``threads``
    CPUs of this process's affinity). Default: all of them."""
    bind: str | None = None
    """An explicit CPU list for the threads (``"0-3"``, ``"0,2"``) or ``"nobind"``
    (no pinning: the OS places the threads). Wins over ``threads``."""
    kv_cache_gib: int | None = None
    """KV-cache size in whole GiB. Default: a tenth of RAM, 1 to 8 GiB."""

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise BackendError("dtype must be one of " + ", ".join(_DTYPES),
                               where="model.cpu.dtype", value=self.dtype,
                               fix="use float32 on CPUs without BF16, bfloat16 with it")
        if self.threads is not None and self.threads < 1:
            raise BackendError("threads must be >= 1", where="model.cpu.threads",
                               value=self.threads, fix="give a core count, e.g. 2")
        if self.kv_cache_gib is not None and self.kv_cache_gib < 1:
            raise BackendError("kv_cache_gib must be >= 1 (whole GiB)",
                               where="model.cpu.kv_cache_gib", value=self.kv_cache_gib,
                               fix="give a whole number of GiB, e.g. 2")
        if self.bind is not None and self.bind != "nobind":
            parse_cpu_list(self.bind, where="model.cpu.bind")


_DTYPES = ("auto", "bfloat16", "float32", "float16")


@dataclass(frozen=True)
class CpuEngineChoice:
    """The settings the CPU engine runs with, and why."""

    dtype: str
    threads: int
    bind: str
    """``VLLM_CPU_OMP_THREADS_BIND``: a CPU list or ``"nobind"``."""
    kv_cache_gib: int
    cpu: CpuInfo
    chosen_by: Mapping[str, str] = field(default_factory=dict)
    """Per setting, ``"hardware"`` (chosen here) or ``"config"`` (the user's)."""

    def env(self) -> dict[str, str]:
        """Environment variables for the engine process that carry these choices."""
        env = {
            "VLLM_CPU_OMP_THREADS_BIND": self.bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
        }
        if self.bind == "nobind":
            # vLLM leaves OpenMP alone when not binding; passive waiting (a thread that is
            # done sleeps at once) lets another process use the core instead of spinning.
            env.update({"OMP_NUM_THREADS": str(self.threads), "KMP_BLOCKTIME": "0"})
        return env

    def describe(self) -> str:
        """One line for the log, e.g. ``engine: float32 on AVX2 CPU without BF16; ...``."""
        if self.bind == "nobind":
            threads = f"{self.threads} threads, not bound, waiting passively"
            if self.chosen_by.get("threads") == "busy machine":
                threads += " (other processes keep the cores busy)"
        else:
            threads = f"{self.threads} thread{'s' if self.threads != 1 else ''} bound to " \
                      f"core{'s' if self.threads != 1 else ''} {self.bind}"
        overridden = sorted(k for k, v in self.chosen_by.items() if v == "config")
        note = f" (from the config: {', '.join(overridden)})" if overridden else ""
        return (f"engine: {self.dtype} on {self.cpu.describe()}; {threads}; "
                f"KV cache {self.kv_cache_gib} GiB of {self.cpu.memory_gib:.0f} GiB{note}")

    def record(self) -> dict[str, str | int | float]:
        """Flat values for the study's attributes and MLflow parameters."""
        return {
            "engine_device": "cpu",
            "engine_dtype": self.dtype,
            "engine_threads": self.threads,
            "engine_bind": self.bind,
            "engine_kv_cache_gib": self.kv_cache_gib,
            "engine_cpu": self.cpu.model_name,
            "engine_cpu_isa": self.cpu.describe(),
            "engine_cpu_flags": " ".join(self.cpu.vector_flags()),
            "engine_chosen_by": ",".join(f"{k}={v}" for k, v in sorted(self.chosen_by.items())),
        }


def parse_cpu_list(text: str, where: str = "cpu list") -> tuple[int, ...]:
    """``"0-2,5"`` -> ``(0, 1, 2, 5)``; a clear error for anything else."""
    cpus: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise BackendError("a CPU list is comma-separated numbers or ranges",
                               where=where, value=text, fix='write e.g. "0-3" or "0,2"')
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise BackendError("a CPU range must run upwards", where=where, value=text,
                               fix=f'write "{high}-{low}"')
        cpus.extend(range(low, high + 1))
    return tuple(sorted(set(cpus)))


def cpu_list(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    ordered = sorted(set(cpus))
    if not ordered:
        return ""
    ranges: list[str] = []
    start = prev = ordered[0]
    for cpu in ordered[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = cpu
    ranges.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(ranges)


def read_cpu_info(
    cpuinfo: str | None = None,
    meminfo: str | None = None,
    cpus: Iterable[int] | None = None,
) -> CpuInfo:
    """Read the processor. Each source can be injected (tests pass other machines' text).

    Args:
        cpuinfo: text of ``/proc/cpuinfo`` (default: read it; empty on non-Linux).
        meminfo: text of ``/proc/meminfo`` (default: read it).
        cpus: the CPUs this process may use (default: its affinity mask).
    """
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo")
    if meminfo is None:
        meminfo = _read("/proc/meminfo")
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:  # pragma: no cover - not Linux
            cpus = range(os.cpu_count() or 1)
    fields = _first_block(cpuinfo)
    flags = frozenset((fields.get("flags") or fields.get("Features") or "").split())
    name = fields.get("model name") or fields.get("Model name") or fields.get("cpu model") \
        or "unknown CPU"
    mem_kib = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.M)
    memory = int(mem_kib.group(1)) / 2**20 if mem_kib else 0.0
    mhz_text = fields.get("cpu MHz")
    try:
        mhz = float(mhz_text) if mhz_text else None
    except ValueError:
        mhz = None
    return CpuInfo(model_name=name.strip(), flags=flags, cpus=tuple(sorted(set(cpus))),
                   memory_gib=memory, mhz=mhz)


def choose_cpu_engine(
    info: CpuInfo, settings: CpuEngineSettings | None = None, *, config_dtype: str | None = None
) -> CpuEngineChoice:
    """The CPU engine's settings for ``info``; the user's overrides win.

    Args:
        info: the machine (:func:`read_cpu_info`).
        settings: overrides from ``model.cpu`` (or the API).
        config_dtype: a ``dtype`` given in ``model.engine`` (vLLM's own keyword); it wins
            over ``settings.dtype``.
    """
    settings = settings or CpuEngineSettings()
    chosen: dict[str, str] = {}

    dtype = config_dtype or settings.dtype
    chosen["dtype"] = "config" if dtype else "hardware"
    if not dtype:
        dtype = "bfloat16" if info.has_bf16 else "float32"

    allowed = info.cpus or (0,)
    if settings.bind is not None:
        bind = settings.bind
        threads = len(allowed) if bind == "nobind" else len(parse_cpu_list(bind))
        if bind != "nobind":
            outside = sorted(set(parse_cpu_list(bind)) - set(allowed))
            if outside:
                raise BackendError(
                    f"CPUs {cpu_list(outside)} are not available to this process",
                    where="model.cpu.bind", value=bind,
                    fix=f"choose among CPUs {cpu_list(allowed)}")
        chosen["threads"] = "config"
    elif settings.threads is not None:
        if settings.threads > len(allowed):
            raise BackendError(
                f"only {len(allowed)} CPUs are available to this process ({cpu_list(allowed)})",
                where="model.cpu.threads", value=settings.threads,
                fix=f"give at most {len(allowed)}")
        threads = settings.threads
        bind = cpu_list(allowed[:threads])
        chosen["threads"] = "config"
    else:
        threads = len(allowed)
        bind = cpu_list(allowed)
        chosen["threads"] = "hardware"

    if settings.kv_cache_gib is not None:
        kv = settings.kv_cache_gib
        chosen["kv_cache_gib"] = "config"
    else:
        kv = int(min(KV_MAX_GIB, max(KV_MIN_GIB, info.memory_gib // 10)))
        chosen["kv_cache_gib"] = "hardware"
    return CpuEngineChoice(dtype=dtype, threads=threads, bind=bind, kv_cache_gib=kv,
                           cpu=info, chosen_by=chosen)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _first_block(cpuinfo: str) -> dict[str, str]:
    """The ``key: value`` lines of the first processor block (all CPUs share the flags)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields
