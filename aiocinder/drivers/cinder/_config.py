"""oslo.config for Cinder drivers: ``[DEFAULT]`` from ``setup()``, one group per backend.

Cinder drivers read their options from Cinder's process-wide
``oslo_config.cfg.CONF``: the backend's own group first, then the shared
``[backend_defaults]`` group (``cinder.volume.configuration``). This module
puts aiocinder's options there the way a ``cinder.conf`` file would:

* every value is checked by the option's own oslo.config type, so a wrong
  value fails before the driver starts, naming the option;
* ``$option``, ``${option}`` and ``${group.option}`` are replaced by other
  options' values (``$$`` is a literal ``$``), as in ``cinder.conf``; an
  option of the same backend is looked up first, then ``[DEFAULT]``;
* a name that is no option (of the driver, of Cinder's backends, or of
  ``[DEFAULT]``) is logged as a warning and otherwise ignored, as Cinder
  ignores unknown lines of ``cinder.conf``;
* secret values never appear in errors or logs: options oslo.config marks
  ``secret``, and any whose name says password, secret, token or key.

Values are set as oslo.config *overrides*, recorded, and cleared again when
the backend (or, for ``[DEFAULT]``, the last Cinder backend) stops.
"""

from __future__ import annotations

import contextlib
import logging
import re
import string
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_config import cfg

from ...exceptions import InvalidArgument

__all__ = ["BackendConfig", "Overrides", "is_secret_option"]

_log = logging.getLogger("aiocinder.drivers.cinder")

CONF = cfg.CONF
#: Cinder's shared group of backend options (``cinder.volume.configuration``).
SHARED_GROUP = "backend_defaults"

_SECRET_WORDS = ("password", "passwd", "secret", "token", "private_key", "auth_key",
                 "_key", "credential")

#: Every group aiocinder registered in this process (oslo.config cannot drop a group).
_made_groups: set[str] = set()
#: The groups of the Cinder backends running now.
_backend_groups: set[str] = set()
_groups_lock = threading.Lock()


class _Template(string.Template):
    # the same placeholder syntax as oslo.config: $name, ${name}, ${group.name}
    idpattern = r"(?a:[_a-z][._a-z0-9]*)"


def is_secret_option(name: str, opt: cfg.Opt | None = None) -> bool:
    """Whether the option holds a secret: marked ``secret`` or so named."""
    if opt is not None and opt.secret:
        return True
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def registered_opt(name: str, group: str | None) -> cfg.Opt | None:
    """The option registered as ``name`` in ``group`` (None: ``[DEFAULT]``), if any.

    oslo.config has no public call that returns a registered ``Opt`` (Cinder's
    own ``Configuration`` reads the same private table).
    """
    try:
        info = CONF._get_opt_info(name, group)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return None
    opt: cfg.Opt = info["opt"]
    return opt


def _describe(name: str, group: str | None) -> str:
    return f"[{group or 'DEFAULT'}] {name}"


class Overrides:
    """Option values set in ``CONF`` by aiocinder, so they can be cleared again."""

    def __init__(self) -> None:
        self._set: list[tuple[str, str | None]] = []

    def set(self, name: str, value: Any, group: str | None,
            pending: Mapping[str, Any] | None = None) -> None:
        """Resolve templates in ``value``, check it with the option's type, set it.

        :param pending: values of the same group not set yet (for ``$name``).
        :raises InvalidArgument: the value does not suit the option, or a
            template refers to an unknown option; a secret value is not shown.
        """
        opt = registered_opt(name, group)
        secret = is_secret_option(name, opt)
        where = _describe(name, group)
        resolved = _escape(_resolve(value, group, pending or {}, where, set()))
        try:
            CONF.set_override(name, resolved, group)
        except (ValueError, TypeError) as exc:
            detail = "" if secret else f" {value!r}: {exc}"
            hidden = " (the value is secret and not shown)" if secret else ""
            raise InvalidArgument(f"invalid value for Cinder option {where}:{detail}{hidden}"
                                  ) from None
        self._set.append((name, group))

    def clear(self) -> None:
        """Clear every override this object set. Idempotent."""
        while self._set:
            name, group = self._set.pop()
            with contextlib.suppress(cfg.NoSuchOptError, cfg.NoSuchGroupError):
                CONF.clear_override(name, group)


def _escape(value: Any) -> Any:
    """Protect ``$`` in a resolved value: oslo.config substitutes overrides when read."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list | tuple):
        return [_escape(item) for item in value]
    if isinstance(value, Mapping):
        return {_escape(k): _escape(v) for k, v in value.items()}
    return value


def _resolve(value: Any, group: str | None, pending: Mapping[str, Any], where: str,
             seen: set[str]) -> Any:
    """``value`` with its ``$`` templates replaced (containers element by element)."""
    if isinstance(value, str):
        return _substitute(value, group, pending, where, seen)
    if isinstance(value, list | tuple):
        return [_resolve(item, group, pending, where, seen) for item in value]
    if isinstance(value, Mapping):
        return {_resolve(k, group, pending, where, seen): _resolve(v, group, pending, where, seen)
                for k, v in value.items()}
    return value


def _substitute(text: str, group: str | None, pending: Mapping[str, Any], where: str,
                seen: set[str]) -> str:
    if "$" not in text:
        return text
    text = text.replace("\\$", "$$")  # oslo.config's other spelling of a literal $

    class Lookup(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            value = _lookup(key, group, pending, where, seen)
            return "" if value is None else value

        def __iter__(self) -> Any:
            return iter(())

        def __len__(self) -> int:
            return 0

    try:
        return _Template(text).substitute(Lookup())
    except ValueError as exc:
        raise InvalidArgument(f"invalid template in Cinder option {where}: {exc}") from None


def _lookup(key: str, group: str | None, pending: Mapping[str, Any], where: str,
            seen: set[str]) -> Any:
    if key in seen:
        raise InvalidArgument(f"Cinder option {where} refers to itself through ${key}")
    ref_group: str | None
    if "." in key:
        ref_group, name = key.split(".", 1)
    else:
        ref_group, name = group, key
    if ref_group == group and name in pending:
        return _resolve(pending[name], group, pending, where, seen | {key})
    for candidate in ((ref_group,) if "." in key else (group, None)):
        if registered_opt(name, candidate) is None:
            continue
        try:
            if candidate is None:
                return CONF[name]
            value = CONF[candidate][name]
            if value is None and candidate in _backend_groups:
                value = CONF[SHARED_GROUP].get(name)
            return value
        except cfg.Error as exc:
            raise InvalidArgument(f"Cinder option {where}: ${key}: {exc}") from None
    raise InvalidArgument(f"Cinder option {where} refers to ${key}, which is no option")


def apply_options(
    overrides: Overrides, options: Mapping[str, Any], group: str | None
) -> dict[str, Any]:
    """Set ``options`` in ``group``; return those that are not registered there (yet).

    A key that names a configuration group, with a mapping as its value, sets
    options of that group (``oslo_concurrency={"lock_path": ...}``).
    """
    unknown: dict[str, Any] = {}
    for name, value in options.items():
        if group is None and isinstance(value, Mapping) and _is_group(name):
            apply_nested(overrides, name, value)
        elif registered_opt(name, group) is None:
            unknown[name] = value
        else:
            overrides.set(name, value, group, pending=options)
    return unknown


def apply_nested(overrides: Overrides, group: str, options: Mapping[str, Any]) -> None:
    """Set options of a named group; unknown ones are warned about."""
    for name, value in options.items():
        if registered_opt(name, group) is None:
            warn_unknown([name], f"Cinder's [{group}] group")
        else:
            overrides.set(name, value, group, pending=options)


def _is_group(name: str) -> bool:
    try:
        return isinstance(CONF[name], cfg.ConfigOpts.GroupAttr)
    except cfg.Error:
        return False


def warn_unknown(names: Iterable[str], where: str) -> None:
    """Log that options are unknown (by name only: values may be secret)."""
    names = sorted(names)
    if names:
        _log.warning("ignoring option(s) unknown to %s: %s", where, ", ".join(names))


class BackendConfig:
    """One backend's oslo.config group, filled from the ``Backend(...)`` options.

    :param name: the backend name, used as the group's name.
    :param options: the options (``volume_driver`` and ``volume_backend_name`` included).
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = dict(options)
        self.overrides = Overrides()
        self._pending: dict[str, Any] = {}
        self._claimed = False

    def build(self, known_opts: Iterable[cfg.Opt]) -> Any:
        """Register the group, set the options Cinder knows now; return the
        ``cinder.volume.configuration.Configuration`` a driver takes.

        :param known_opts: the driver's options and Cinder's backend options;
            any not registered in the group yet is registered there.
        :raises InvalidArgument: the name clashes with a group of Cinder's, or a
            value is invalid.
        """
        from cinder.volume import configuration

        self._claim_group()
        opts = list(known_opts)
        conf = configuration.Configuration(opts, config_group=self.name)
        # options registered in [backend_defaults] or [DEFAULT] by other modules
        for name in self.options:
            if name in CONF[self.name]:
                continue
            opt = registered_opt(name, SHARED_GROUP) or registered_opt(name, None)
            if opt is not None:
                conf.append_config_values([opt])
        self._pending = apply_options(self.overrides, self.options, self.name)
        return conf

    def apply_pending(self, driver_name: str) -> None:
        """Set options the driver registered when it was built; warn about the rest."""
        pending, self._pending = self._pending, {}
        unknown = {name: value for name, value in pending.items()
                   if registered_opt(name, self.name) is None}
        for name, value in pending.items():
            if name not in unknown:
                self.overrides.set(name, value, self.name, pending=self.options)
        warn_unknown(unknown, f"{driver_name} (backend {self.name!r})")

    def clear(self) -> None:
        """Clear the values this backend set (the group itself stays registered)."""
        self.overrides.clear()
        with _groups_lock:
            if self._claimed:
                _backend_groups.discard(self.name)
                self._claimed = False

    def _claim_group(self) -> None:
        with _groups_lock:
            if self.name in _backend_groups:
                raise InvalidArgument(f"Cinder configuration group [{self.name}] is in use")
            if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
                raise InvalidArgument(
                    f"a Cinder backend's name must be letters, digits, '_' or '-' (it names "
                    f"a Cinder configuration group): {self.name!r}"
                )
            clashes = (self.name.upper() == "DEFAULT" or registered_opt(self.name, None)
                       or (_is_group(self.name) and self.name not in _made_groups))
            if clashes:
                raise InvalidArgument(
                    f"backend name {self.name!r} is already a name in Cinder's configuration "
                    "(a group or a [DEFAULT] option); choose another"
                )
            if self.name not in _made_groups:
                CONF.register_group(cfg.OptGroup(self.name))
                _made_groups.add(self.name)
            _backend_groups.add(self.name)
            self._claimed = True
