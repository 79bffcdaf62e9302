"""The YAML loader behind :mod:`jointopt.safety.safe_load` (use that module, not this one).

``yaml.safe_load`` semantics on libyaml's C parser when available, with a composer that
counts alias uses, the number of values the document expands to and the nesting depth
while it composes (an alias bomb is refused after a few thousand values, not after
walking billions), and a constructor that refuses a key given twice in one mapping.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

__all__ = ["GuardedLoader", "Refused"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(Exception):
    """A cap or rule broken while composing or constructing (carries the line)."""

    def __init__(self, message: str, mark: Any, value: Any, fix: str) -> None:
        super().__init__(message)
        self.message, self.mark, self.value, self.fix = message, mark, value, fix


class _GuardedComposer(Composer):
    """PyYAML's composer, counting alias uses, expanded values and depth as it goes."""

    def _guard_init(self, max_depth: int, max_nodes: int, max_aliases: int) -> None:
        self.max_depth, self.max_nodes, self.max_aliases = max_depth, max_nodes, max_aliases
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
        self._expanded = 0
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # undefined aliases raise here
            return self._alias(node, event)
        event = self.peek_event()
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise Refused(f"values are nested more than {self.max_depth} levels "
                              "deep", event.start_mark, self._depth,
                              "flatten the structure")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size, height = 1, 0
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            child_size, child_height = self._shape[id(child)]
            size += child_size
            height = max(height, child_height + 1)
        self._shape[id(node)] = (size, height)
        self._count(1, event.start_mark)
        return node

    def _alias(self, node: Any, event: Any) -> Any:
        shape = self._shape.get(id(node))
        if shape is None:
            raise Refused(f"the alias *{event.anchor} refers to a value that contains it "
                          "(a recursive structure)", event.start_mark, f"*{event.anchor}",
                          "write the value out instead of referring to itself")
        self._aliases += 1
        if self._aliases > self.max_aliases:
            raise Refused(f"more than {self.max_aliases} alias uses (*name)",
                          event.start_mark, f"*{event.anchor}",
                          "write the values out; aliases are meant for a few repeats")
        size, height = shape
        if self._depth + 1 + height > self.max_depth:
            raise Refused(f"the alias *{event.anchor} nests values more than "
                          f"{self.max_depth} levels deep", event.start_mark,
                          f"*{event.anchor}", "flatten the structure")
        self._count(size, event.start_mark, f"*{event.anchor}")
        return node

    def _count(self, size: int, mark: Any, alias: str | None = None) -> None:
        self._expanded += size
        if self._expanded > self.max_nodes:
            how = f" once alias {alias} is expanded (an alias bomb?)" if alias else ""
            raise Refused(f"the document holds more than {self.max_nodes} values{how}; "
                          "it was not loaded", mark, alias or self._expanded,
                          "remove the nested aliases (&name / *name) that multiply the "
                          "document, or split it")


class _GuardedConstructor(SafeConstructor):
    """``yaml.safe_load``'s constructor, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue
                if first is not key_node.start_mark:
                    again = key_node.start_mark
                    lines = (f"lines {first.line + 1} and {again.line + 1}"
                             if first.line != again.line else
                             f"line {again.line + 1}, columns {first.column + 1} and "
                             f"{again.column + 1}")
                    raise Refused(f"the key {key!r} is given twice in one mapping ({lines}); "
                                  "YAML would silently keep the last one", again, key,
                                  f"keep one `{key}:` and delete the other")
        return super().construct_mapping(node, deep=deep)


_CParser = getattr(yaml, "CParser", None)


def _loader_class() -> type:
    if _CParser is not None:
        class _CLoader(_GuardedComposer, _CParser, _GuardedConstructor, Resolver):
            def __init__(self, stream: str, **caps: int) -> None:
                _CParser.__init__(self, stream)
                Composer.__init__(self)
                _GuardedConstructor.__init__(self)
                Resolver.__init__(self)
                self._guard_init(**caps)
        return _CLoader
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _PyLoader(Reader, Scanner, Parser, _GuardedComposer, _GuardedConstructor, Resolver):
        def __init__(self, stream: str, **caps: int) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            _GuardedConstructor.__init__(self)
            Resolver.__init__(self)
            self._guard_init(**caps)
    return _PyLoader


#: ``GuardedLoader(text, max_depth=..., max_nodes=..., max_aliases=...)``
GuardedLoader = _loader_class()
