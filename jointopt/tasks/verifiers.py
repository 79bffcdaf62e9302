"""Serve-time verifier references (``"package.module:function"``), resolved against an
allow-list.

A policy file names its task's verifier as ``module:function``; importing a module runs
its code, so a policy file must not be able to import whatever it names. A reference is
resolved only when its module is jointopt's own (``jointopt`` and its submodules) or one
the operator allowed (``jointopt serve --allow-verifier MODULE``, or
``load_policy(..., allow_verifiers=[...])``); anything else is refused *before* any
import, with a :class:`~jointopt.errors.ConfigError`. The function found must also be
defined in an allowed module, so ``jointopt.x:os.system`` cannot reach past the list.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from typing import Any

from jointopt.errors import ConfigError

__all__ = ["BUILTIN_VERIFIER_MODULES", "check_allowed_modules", "resolve_verifier"]

log = logging.getLogger(__name__)

#: Modules whose verifiers every policy may use (jointopt's own, and their submodules).
BUILTIN_VERIFIER_MODULES: tuple[str, ...] = ("jointopt",)

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_allowed_modules(modules: Iterable[str], where: str = "allow_verifiers"
                          ) -> tuple[str, ...]:
    """The allowed module names, checked to be dotted Python module names.

    Raises:
        ConfigError: a name that is not ``package.module`` (e.g. it holds ``:``).
    """
    out = []
    for module in modules:
        if not isinstance(module, str) or not _MODULE.match(module):
            raise ConfigError("an allowed verifier module must be a dotted module name",
                              where=where, value=module,
                              fix="name the module only, e.g. mypkg.verifiers (not "
                                  "mypkg.verifiers:check)")
        out.append(module)
    return tuple(out)


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in allowed)


def resolve_verifier(path: str, allow: Iterable[str] = (), *,
                     where: str = "metadata.task.verifier") -> Any:
    """The callable a ``"module:function"`` reference names, or None when an allowed
    module cannot be imported (logged as a warning; the policy then runs without it).

    Args:
        path: the reference, as written in the policy file.
        allow: further modules (and their submodules) the operator trusts.
        where: the field named in errors.

    Raises:
        ConfigError: a malformed reference, a module outside the allow-list (nothing is
            imported), or a name that is not a function defined in an allowed module.
    """
    allowed = BUILTIN_VERIFIER_MODULES + check_allowed_modules(allow)
    module, _, name = str(path).partition(":")
    if not _MODULE.match(module) or not name or not _MODULE.match(name):
        raise ConfigError("a verifier must be written as 'package.module:function'",
                          where=where, value=path, fix="e.g. mypkg.verifiers:check, or null")
    if not _allowed(module, allowed):
        raise ConfigError(
            f"verifier module {module!r} is not on the allow-list, so it is not imported "
            f"(allowed: {', '.join(allowed)})", where=where, value=path,
            fix=f"if you trust it, allow it: jointopt serve --allow-verifier {module} (or "
                f"load_policy(..., allow_verifiers=[{module!r}])); otherwise set the "
                "verifier to null")
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        log.warning("cannot import the serve-time verifier %s (%s); running without it",
                    path, exc)
        return None
    home = getattr(target, "__module__", None)
    if not callable(target) or not isinstance(home, str) or not _allowed(home, allowed):
        raise ConfigError(
            "the verifier must be a function defined in an allowed module", where=where,
            value=path, fix=f"point at a function of {module} itself, or allow the module "
                            f"that defines it ({home or 'unknown'}) with --allow-verifier")
    return target
