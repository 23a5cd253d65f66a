"""The one ``--set`` grammar (``perceptio convert``, ``perceptio train``,
:func:`~perceptio.train.experiment.load_experiment`) and the YAML reading it shares with
experiment files.

``KEY=VALUE``: KEY is a field name or a dotted path (``num_latents``, ``train.steps``,
``encoder.dropout``); VALUE is one YAML value, read by PyYAML's safe loader with YAML 1.2
numbers (so ``1e-3`` is a float, not a string): ``2``, ``1e-3``, ``true``, ``null``,
``[1, 2]``, ``{a: 1}``; any other text is a string (``lamb``, ``runs/x``); an empty VALUE
is null. Where the key goes is up to the caller: preset size fields and dotted paths
(:meth:`~perceptio.presets.Preset.config`), or an experiment mapping
(:func:`~perceptio.config.set_by_path`).

Convert's ``--set`` needs PyYAML too (the ``[train]`` extra) rather than a fallback
parser: a second parser would be a second grammar that disagrees at the edges (``1e-3``,
``yes``, ``[a, b]``). Without ``--set``, nothing here is imported.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from .config import ConfigError

# The CLI help of every subcommand's --set (the grammar, documented once).
SET_HELP = ("KEY=VALUE, repeatable; KEY a field name or dotted path, VALUE a YAML value "
            "(2, 1e-3, true, null, [1, 2]; other text is a string)")


def yaml_module():
    """PyYAML, or an ImportError that names the extra to install."""
    try:
        import yaml
    except ImportError:
        raise ImportError("YAML experiment configs and --set values need PyYAML: pip install 'perceptio[train]'") from None
    return yaml


@functools.cache
def yaml_loader() -> type:
    """PyYAML's SafeLoader, but reading ``1e-3`` as a number (YAML 1.2) rather than a string."""
    yaml = yaml_module()

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
        list("-+0123456789."),
    )
    return Loader


# Most nodes a YAML document may expand to, aliases counted at every use: an experiment
# file has hundreds; a nested alias bomb (``&a [*b, *b, ...]``) 10^9, which copying
# (``to_dict``, ``--set``) would materialise.
MAX_YAML_NODES = 100_000


def load_yaml(text: str) -> Any:
    """A YAML document (an experiment file, a --set value) as plain Python data.

    Aliases (``*name``) are allowed, but the document they expand to is counted before
    anything is built: above :data:`MAX_YAML_NODES` nodes, or an alias inside its own
    anchor (a cycle), it is refused with a ``ConfigError`` naming the line."""
    loader = yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def expanded_size(node: Any, sizes: dict[int, int], active: set[int]) -> int:
    """Number of nodes of the composed YAML ``node`` with every alias expanded, computed
    once per distinct node (so in time linear in the document, not in its expansion)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    mark = f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"
    if key in active:
        raise ConfigError(f"YAML {mark}: an alias refers to the node that contains it (a cycle); "
                          "write the value out instead")
    active.add(key)
    children = node.value if isinstance(node.value, list) else []
    total = 1
    for child in children:
        parts = child if isinstance(child, tuple) else (child,)  # mapping items are (key, value) pairs
        total += sum(expanded_size(part, sizes, active) for part in parts)
        if total > MAX_YAML_NODES:
            raise ConfigError(f"YAML {mark}: the document expands to more than {MAX_YAML_NODES:,} values through "
                              "aliases (*name); an experiment file needs far fewer, write the values out")
    active.discard(key)
    sizes[key] = total
    return total


def parse_assignments(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``["train.steps=100", "optim.betas=[0.9, 0.99]"]`` -> ``[("train.steps", 100),
    ("optim.betas", [0.9, 0.99])]``, in order (a later assignment to a key wins)."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not all(key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. num_latents=8 or train.steps=100")
        try:
            value = load_yaml(text)
        except ImportError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
        except yaml_module().YAMLError as e:
            raise ConfigError(f"--set {item!r}: VALUE is not one YAML value ({' '.join(str(e).split())})") from None
        out.append((key, value))
    return out
