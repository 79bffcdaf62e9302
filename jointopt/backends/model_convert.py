"""GGUF -> safetensors conversion of an embedded model, run in a child process.

The conversion imports transformers, gguf and accelerate and dequantizes the whole model
in memory (a few GB for a 0.5B model). A study that prepares its model on demand starts a
vLLM engine right after, in the same process: :func:`convert_in_child` runs
:func:`convert_here` in a fresh interpreter, so that memory and those libraries' state
are gone before the engine loads, and only reports the outcome.

    python -m jointopt.backends.model_convert GGUF OUT   # chat template (optional) on stdin
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from jointopt.errors import ModelError

__all__ = ["convert_here", "convert_in_child"]

logger = logging.getLogger("jointopt.backends.models")
#: Marks the child's one-line error report on its stderr.
_ERROR_MARK = "jointopt-convert-error: "


def convert_here(gguf: Path, out: Path, chat_template: str | None = None) -> None:
    """Dequantize a GGUF into a bfloat16 safetensors folder (tokenizer and chat template
    kept; ``chat_template`` replaces the GGUF's), in this process."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelError(
            f"converting the embedded model needs torch, transformers, gguf and accelerate ({exc})",
            fix="run: bash scripts/setup.sh (or pip install 'jointopt[model]' transformers torch)",
        ) from exc
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    # transformers tags a GGUF model as quantized although its weights are dequantized;
    # saving it with that tag yields a folder vLLM refuses. Drop the tag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if getattr(model, attr, None):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, None if attr == "quantization_method" else False)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("the converted tokenizer has no chat template")


def convert_in_child(gguf: Path, out: Path, chat_template: str | None = None) -> None:
    """:func:`convert_here` in a fresh interpreter running this jointopt.

    Raises:
        ModelError: the conversion failed (the child's error is in the message).
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "jointopt.backends.model_convert", str(gguf), str(out)],
        input=chat_template or "", capture_output=True, text=True, env=env, check=False)
    if done.returncode == 0:
        return
    lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
    marked = [line[len(_ERROR_MARK):] for line in lines if line.startswith(_ERROR_MARK)]
    reason = marked[-1] if marked else " | ".join(lines[-3:]) or f"exit code {done.returncode}"
    raise ModelError(f"converting {gguf.name} failed: {reason}",
                     fix="check the versions of transformers/gguf (bash scripts/setup.sh), "
                         "then retry with --force")


def _main(argv: list[str]) -> int:
    gguf, out = Path(argv[0]), Path(argv[1])
    template = sys.stdin.read() or None
    logging.basicConfig(level=logging.WARNING)
    try:
        convert_here(gguf, out, template)
    except ModelError as exc:
        print(_ERROR_MARK + exc.message, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - transformers/gguf raise many kinds
        print(f"{_ERROR_MARK}{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
