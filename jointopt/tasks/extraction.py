"""Reading answers out of model completions, and comparing them with targets.

:class:`AnswerExtractor` turns a raw completion into an answer string (or ``None``);
:class:`AnswerMatcher` decides whether an answer equals a target and gives the canonical
form of an answer that voting strategies count.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, get_args

from jointopt.errors import ConfigError
from jointopt.tasks._common import did_you_mean

__all__ = ["AnswerExtractor", "AnswerMatcher", "ExtractorKind", "MatcherKind", "parse_int",
           "parse_number"]

ExtractorKind = Literal["regex", "last_number", "choice_letter", "exact", "first_line"]
MatcherKind = Literal["exact", "normalized", "numeric", "words"]

_EXTRACTOR_KINDS: tuple[str, ...] = get_args(ExtractorKind)
_MATCHER_KINDS: tuple[str, ...] = get_args(MatcherKind)

# --- numbers -----------------------------------------------------------------------------
# A minus sign counts only when it does not follow a word character or a dot ("3-5" is
# "3" and "5", "x-1" is "x" and "1"); thousands separators need groups of exactly 3 digits,
# so a list "3,5,7" stays three numbers.
_NUM = r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
# An explicit answer marker followed by a number that is not the start of an expression
# ("Answer: 3 + 5 = 8" is not the answer 3).
_MARKED_NUM_RE = re.compile(
    r"(?:(?i:\banswer|\bresult)\s*(?:(?i:is)\b)?\s*[:=]?|####)\s*(?:\*\*)?\s*\$?\s*"
    r"(" + _NUM + r")(?!\s*[-+*/×x=^]\s*\d)(?!\d|,\d{3})"
)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})

# --- lines ---------------------------------------------------------------------------------
# A short lead-in before a colon: "Answer:", "Reversed list:", "Here are the words reversed:".
_LEAD_RE = re.compile(r"^\s*(?:\*\*)?\s*([A-Za-z][A-Za-z' ]{0,80}?)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*")
_LEAD_MAX_WORDS = 8
# "The answer is X", "So the final answer is: X".
_ANSWER_IS_RE = re.compile(
    r"^\s*(?:so\s*,?\s*)?(?:the\s+|my\s+)?(?:final\s+|correct\s+)?answer\s+is\s*:?\s*", re.I
)
_PAIRS: Mapping[str, str] = MappingProxyType(
    {"[": "]", "(": ")", "{": "}", "<": ">", '"': '"', "'": "'", "`": "`",
     "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb"}
)

# --- letters -------------------------------------------------------------------------------
_LETTERS = "A-J"
_MARKED_LETTER_RE = re.compile(
    r"(?i:\b(?:answer|option|choice))\s*(?:(?i:is)\b)?\s*[:\-]?\s*(?:\*\*)?\s*[\(\[]?"
    rf"((?i:[{_LETTERS}]))(?![A-Za-z])"
)
_PAREN_LETTER_RE = re.compile(rf"[\(\[]([{_LETTERS}])[\)\]]")
_LONE_LETTER_RE = re.compile(rf"(?<![A-Za-z'])([{_LETTERS}])(?![A-Za-z'])")

# --- matching ------------------------------------------------------------------------------
_EDGE_PUNCT = ".,;:!?\"'`()[]{}<>*\u201c\u201d\u2018\u2019\u00ab\u00bb"
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_SPACE_RE = re.compile(r"\s+")


def parse_number(text: str) -> float | None:
    """Parse a number written by a model or a dataset: ``"1,234"``, ``"-3.5"``, ``"$12"``,
    ``"50%"`` (-> 50), ``"3/4"``, ``"17."``. Returns ``None`` when it is not one finite number."""
    s = unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS).strip()
    s = s.strip("*`\"' ")
    s = s.rstrip(".").strip()
    if s.startswith("$"):
        s = s[1:]
    if s.endswith("%"):
        s = s[:-1]
    s = s.replace(",", "").replace(" ", "")
    if not s:
        return None
    try:
        value = float(s)
    except ValueError:
        try:
            value = float(Fraction(s))
        except (ValueError, ZeroDivisionError):
            return None
    return value if math.isfinite(value) else None


def parse_int(text: str) -> int | None:
    """:func:`parse_number` when it is a whole number, else None."""
    value = parse_number(text)
    return int(value) if value is not None and value == int(value) else None


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return format(value, ".12g")


def _strip_pairs(s: str) -> str:
    """Strip surrounding markdown, quotes and brackets (only a pair with none inside)."""
    while True:
        before = s
        s = s.strip()
        if s.startswith("**") and s.endswith("**") and len(s) > 4:
            s = s[2:-2].strip()
        if len(s) >= 2 and s[0] in _PAIRS and s[-1] == _PAIRS[s[0]]:
            inner = s[1:-1]
            if s[0] not in inner and s[-1] not in inner:
                s = inner
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1]
        if s == before:
            return s


def _strip_label(line: str) -> str:
    lead = _LEAD_RE.match(line)
    if lead and len(lead.group(1).split()) <= _LEAD_MAX_WORDS:
        line = line[lead.end():]
    answer_is = _ANSWER_IS_RE.match(line)
    if answer_is:
        line = line[answer_is.end():]
    return line.strip()


@dataclass(frozen=True)
class AnswerExtractor:
    """Reads the answer out of a completion.

    Kinds:
        ``regex``: the ``group`` of the *last* match of ``pattern`` (searched with
        ``re.search`` semantics, flags inline, e.g. ``(?i)``).
        ``last_number``: the number after the last explicit marker (``answer is``,
        ``Answer:``, ``####``) when there is one, else the last number in the text;
        thousands separators removed (``"1,234"`` -> ``"1234"``).
        ``choice_letter``: a multiple-choice letter A-J, upper-cased: after ``answer``/
        ``option``, else at the start, else the first ``(X)``, else the first lone letter
        (not the article "A ..." / pronoun-like uses).
        ``exact``: the whole completion, stripped.
        ``first_line``: the first line with content, without a short lead-in label
        (``Answer:``, ``Reversed list:``, ``The answer is``) and without surrounding
        quotes, brackets, markdown bold and a final period. A line that is only a lead-in
        (``Here are the words reversed:``) or a code fence is skipped.

    Attributes:
        kind: one of the kinds above.
        pattern: the regular expression (only for ``regex``; compiled at construction).
        group: the group number or name to return (only for ``regex``).

    Raises:
        ConfigError: unknown kind, missing/invalid pattern, or a group the pattern lacks.
    """

    kind: ExtractorKind
    pattern: str | None = None
    group: int | str = 1
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _EXTRACTOR_KINDS:
            raise ConfigError(
                f"unknown answer extractor kind.{did_you_mean(self.kind, _EXTRACTOR_KINDS)}",
                where="extractor.kind",
                value=self.kind,
                fix=f"use one of {list(_EXTRACTOR_KINDS)}",
            )
        if self.kind != "regex":
            if self.pattern is not None:
                raise ConfigError(
                    f"a pattern only applies to the 'regex' extractor, not {self.kind!r}",
                    where="extractor.pattern",
                    value=self.pattern,
                    fix="remove the pattern or set kind: regex",
                )
            return
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(
                "the 'regex' extractor needs a pattern",
                where="extractor.pattern",
                value=self.pattern,
                fix=r"give a pattern with a group, e.g. 'Answer:\s*(.+)'",
            )
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(
                f"the extractor pattern is not a valid regular expression: {exc}",
                where="extractor.pattern",
                value=self.pattern,
                fix="fix the regular expression (Python 're' syntax)",
            ) from None
        group = self.group
        if isinstance(group, bool) or not isinstance(group, (int, str)):
            raise ConfigError(
                "the extractor group must be a group number or name",
                where="extractor.group",
                value=group,
                fix="use 0 for the whole match, 1 for the first group, or a group name",
            )
        if isinstance(group, int) and not 0 <= group <= compiled.groups:
            raise ConfigError(
                f"the pattern has {compiled.groups} group(s); group {group} does not exist",
                where="extractor.group",
                value=group,
                fix=f"use a group between 0 and {compiled.groups}, or add a (...) group to the "
                f"pattern {self.pattern!r}",
            )
        if isinstance(group, str) and group not in compiled.groupindex:
            raise ConfigError(
                f"the pattern has no group named {group!r}",
                where="extractor.group",
                value=group,
                fix=f"name a group of the pattern {self.pattern!r}: "
                f"{sorted(compiled.groupindex) or 'it has no named groups'}",
            )
        object.__setattr__(self, "_compiled", compiled)

    def extract(self, text: str) -> str | None:
        """The answer in ``text``, or ``None`` when nothing is found."""
        if not text:
            return None
        if self.kind == "regex":
            return self._extract_regex(text)
        if self.kind == "last_number":
            return self._extract_number(text)
        if self.kind == "choice_letter":
            return self._extract_letter(text)
        if self.kind == "exact":
            return text.strip() or None
        return self._extract_first_line(text)

    def _extract_regex(self, text: str) -> str | None:
        compiled = self._compiled if self._compiled is not None else re.compile(str(self.pattern))
        found = None
        for match in compiled.finditer(text):
            value = match.group(self.group)
            if value is not None and value.strip():
                found = value.strip()
        return found

    @staticmethod
    def _extract_number(text: str) -> str | None:
        text = text.translate(_MINUS_SIGNS)
        marked = _MARKED_NUM_RE.findall(text)
        if marked:
            raw = marked[-1]
        else:
            numbers = _NUM_RE.findall(text)
            if not numbers:
                return None
            raw = numbers[-1]
        return raw.replace(",", "")

    @staticmethod
    def _extract_letter(text: str) -> str | None:
        marked = [
            m.group(1)
            for m in _MARKED_LETTER_RE.finditer(text)
            # a lower-case letter followed by a word is an article ("the answer is a bit")
            if m.group(1).isupper() or not re.match(r"\s+[a-z]", text[m.end():])
        ]
        if marked:
            return marked[-1].upper()
        head = text.lstrip().lstrip("*([").lstrip()
        if head and head[0] in "ABCDEFGHIJ":
            rest = head[1:]
            if not rest or not rest[0].isalpha():
                if not (head[0] in "AI" and re.match(r"\s+[a-z]", rest)):
                    return head[0]
        paren = _PAREN_LETTER_RE.search(text)
        if paren:
            return paren.group(1)
        for match in _LONE_LETTER_RE.finditer(text):
            letter = match.group(1)
            after = text[match.end():]
            if letter in "AI" and re.match(r"\s+[a-z]", after):
                continue
            return letter
        return None

    @staticmethod
    def _extract_first_line(text: str) -> str | None:
        for line in text.splitlines():
            if not line.strip() or line.strip(" *").endswith(":"):
                continue  # blank, or a lead-in such as "Sure! Here they are:"
            value = _strip_pairs(_strip_label(line))
            if value.strip("`* "):
                return value
        return None


@dataclass(frozen=True)
class AnswerMatcher:
    """Compares answers with targets; gives the canonical form used for voting.

    Kinds:
        ``exact``: equal after stripping surrounding whitespace.
        ``normalized``: case-insensitive (Unicode NFKC + casefold), whitespace collapsed,
        surrounding punctuation/quotes/brackets and a final period removed.
        ``numeric``: both parse as numbers (``"1,234"``, ``"$5"``, ``"3/4"``, ``"17."``) and
        ``math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)``; a target that is
        not a number is compared in ``normalized`` form.
        ``words``: the same sequence of words, ignoring case and punctuation
        (``"c, b, a"`` == ``"C B A"`` == ``"[c, b, a]"``).

    Attributes:
        kind: one of the kinds above.
        tolerance: the numeric tolerance (only for ``numeric``).

    Raises:
        ConfigError: unknown kind or a negative/non-finite tolerance.
    """

    kind: MatcherKind
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in _MATCHER_KINDS:
            raise ConfigError(
                f"unknown answer matcher kind.{did_you_mean(self.kind, _MATCHER_KINDS)}",
                where="matcher.kind",
                value=self.kind,
                fix=f"use one of {list(_MATCHER_KINDS)}",
            )
        tol = self.tolerance
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not math.isfinite(tol)
            or tol < 0
        ):
            raise ConfigError(
                "the matcher tolerance must be a finite number >= 0",
                where="matcher.tolerance",
                value=tol,
                fix="use e.g. 1e-6 (or 0 for exact numeric equality)",
            )

    def normalize(self, answer: str) -> str:
        """The canonical form of ``answer``: equal answers normalize equal.

        For ``numeric``, a parseable number becomes ``"17"`` / ``"-3.5"`` (so ``"17.0"``,
        ``"17"``, ``"17."`` and ``"$17"`` vote together); anything else falls back to the
        ``normalized`` form.
        """
        if self.kind == "exact":
            return answer.strip()
        if self.kind == "words":
            folded = unicodedata.normalize("NFKC", answer).casefold()
            return " ".join(_WORD_RE.findall(folded))
        if self.kind == "numeric":
            value = parse_number(answer)
            if value is not None:
                return _format_number(value)
        folded = unicodedata.normalize("NFKC", answer).casefold()
        folded = _SPACE_RE.sub(" ", folded).strip()
        return folded.strip(_EDGE_PUNCT + " ")

    def matches(self, answer: str | None, target: str) -> bool:
        """Whether ``answer`` is correct for ``target`` (``None`` never is)."""
        if answer is None:
            return False
        if self.kind == "numeric":
            want = parse_number(target)
            if want is not None:
                got = parse_number(answer)
                if got is None:
                    return False
                return math.isclose(got, want, rel_tol=self.tolerance, abs_tol=self.tolerance)
        got_norm = self.normalize(answer)
        return bool(got_norm) and got_norm == self.normalize(target)
