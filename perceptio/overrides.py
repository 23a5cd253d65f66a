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


def load_yaml(text: str) -> Any:
    """A YAML document (an experiment file, a --set value) as plain Python data."""
    return yaml_module().load(text, Loader=yaml_loader())


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
