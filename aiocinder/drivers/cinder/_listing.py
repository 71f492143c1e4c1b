"""The subprocess behind :func:`aiocinder.list_supported_drivers`.

Run as ``python -m aiocinder.drivers.cinder._listing <output_version>``: it
imports every volume driver module Cinder ships and writes one JSON object
to its standard output. Whatever the driver modules print while importing
goes to standard error instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: containers recursively, objects as their public fields."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, type):
        return value.__name__
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict) and fields:
        return {k: jsonable(v) for k, v in fields.items() if not k.startswith("_")}
    return str(value)


def describe_option(opt: Any, output_version: int) -> dict[str, Any]:
    """One oslo.config option: its public fields (all ``str`` in version 1)."""
    public = {k: v for k, v in vars(opt).items() if not k.startswith("_")}
    if output_version == 1:
        return {k: str(v) for k, v in public.items()}
    described = {k: jsonable(v) for k, v in public.items() if k != "type"}
    type_fields = {k: jsonable(v) for k, v in vars(opt.type).items() if not k.startswith("_")}
    described["type"] = {**type_fields, "type_class": type(opt.type).__name__}
    return described


def list_drivers(output_version: int) -> dict[str, dict[str, Any]]:
    """Import Cinder's volume drivers and describe each (needs Cinder installed)."""
    import cinder
    from cinder import objects
    from cinder.interface import util

    objects.register_all()
    # Registers the backend options that some drivers' option lists refer to.
    import cinder.volume.manager

    # get_volume_drivers() walks the relative path 'cinder/volume/drivers'.
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(cinder.__file__))))
    found = util.get_volume_drivers()
    names = Counter(info.class_name for info in found)
    drivers: dict[str, dict[str, Any]] = {}
    for info in found:
        entry = {k: jsonable(v) for k, v in vars(info).items()
                 if k not in ("cls", "driver_options") and not k.startswith("_")}
        entry["driver_options"] = [describe_option(opt, output_version)
                                   for opt in info.driver_options]
        # keyed by class name, as cinderlib did; a name that two drivers share
        # (Nexenta's NS4 and NS5 drivers) is keyed by full path instead
        drivers[info.class_name if names[info.class_name] == 1 else info.class_fqn] = entry
    return drivers


def main(argv: list[str]) -> int:
    output_version = int(argv[1]) if len(argv) > 1 else 1
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # driver modules may print
    with out:
        json.dump(list_drivers(output_version), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
