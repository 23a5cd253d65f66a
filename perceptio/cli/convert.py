"""``perceptio convert SOURCE OUT_DIR``: import a published checkpoint.

SOURCE is a DeepMind checkpoint (``.pickle`` / ``.pystate``) or a Hugging Face model
directory; the kind is detected from the content. For DeepMind checkpoints the
architecture is the preset recognised from the parameter names, or ``--preset`` with
``--set KEY=VALUE`` overrides (the grammar of :mod:`perceptio.overrides`), or ``--config``
(a perceptio config.json, or a JSON file whose ``config`` holds the reference constructor
arguments)."""

from __future__ import annotations

from ..overrides import SET_HELP


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a DeepMind or Hugging Face checkpoint to a perceptio model directory")
    p.add_argument("source", help="DeepMind .pickle/.pystate file or Hugging Face model directory")
    p.add_argument("out_dir", help="directory to write config.json and model.safetensors to")
    p.add_argument("--preset", help="architecture of a DeepMind checkpoint (default: recognised from the weights)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a preset size field (num_latents=8) or a dotted config path "
                        f"(encoder.dropout=0.1): {SET_HELP}")
    p.add_argument("--config", help="explicit architecture for a DeepMind checkpoint instead of a preset")
    p.set_defaults(run=run)


def load_config(path: str):
    from perceptio.interop.deepmind import config_from_reference
    from perceptio.model import PerceiverConfig
    from perceptio.pretrained import read_json

    data = read_json(path)
    if "input_adapter" in data:
        return PerceiverConfig.from_dict(data)
    if isinstance(data.get("config"), dict) and "model" in data["config"]:
        return config_from_reference(data["config"])
    raise ValueError(f"{path}: expected a perceptio config.json or a JSON file with the reference 'config'")


def run(args) -> int:
    from ..checkpoints import convert, detect_source
    from ..overrides import parse_assignments
    from ..presets import count_parameters

    overrides = dict(parse_assignments(args.overrides))
    if args.config and (args.preset or overrides):
        raise ValueError("--config replaces --preset/--set; give one or the other")
    preset = load_config(args.config) if args.config else args.preset
    kind = detect_source(args.source)
    model = convert(args.source, args.out_dir, preset, **overrides)
    print(f"converted {kind} checkpoint {args.source} -> {args.out_dir} ({count_parameters(model):,} parameters)")
    return 0
