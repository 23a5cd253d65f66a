"""``perceptio presets``: the published models this version can build."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the published models (name, task, parameter count)")
    p.add_argument("name", nargs="?", help="show one preset: its size fields and where its weights come from")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args) -> int:
    from perceptio.presets import count_parameters, get_preset, list_presets

    names = [args.name] if args.name else list_presets()
    rows = []
    for name in names:
        preset = get_preset(name)
        rows.append({
            "name": name, "task": preset.task, "parameters": count_parameters(preset.config()),
            "description": preset.description, "huggingface": preset.huggingface, "deepmind": preset.deepmind,
            "size_fields": preset.size_fields,
        })
    if args.json:
        print(json.dumps(rows if not args.name else rows[0], indent=2))
        return 0
    if args.name:
        row = rows[0]
        print(f"{row['name']}: {row['description']}")
        print(f"  task: {row['task']}\n  parameters: {row['parameters']:,}")
        print(f"  weights: Hugging Face {row['huggingface']}, DeepMind {row['deepmind']}")
        print("  size fields (override with create_model(name, field=value) or --set field=value):")
        for field, value in row["size_fields"].items():
            print(f"    {field} = {value!r}")
        return 0
    width = max(len(r["name"]) for r in rows)
    task_width = max(len(r["task"]) for r in rows)
    print(f"{'name':<{width}}  {'task':<{task_width}}  {'parameters':>12}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['task']:<{task_width}}  {r['parameters']:>12,}  {r['description']}")
    return 0
