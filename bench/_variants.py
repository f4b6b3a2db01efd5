"""Recipe variants on the command line, shared by `ablation.py` and `lora.py`:
`RECIPE [--only PREFIX ...] [--set KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import os

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")


def variant_arguments(description: str, variants: dict) -> argparse.Namespace:
    """Parses the recipe name, the `--only` prefixes and extra `--set` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("recipe", choices=sorted(variants))
    parser.add_argument("--only", nargs="*", help="variants whose name starts with these")
    parser.add_argument("--set", action="append", default=[], help="extra override for all")
    return parser.parse_args()


def chosen_variants(variants: dict, args: argparse.Namespace) -> dict[str, list[str]]:
    """The recipe's variants whose names start with one of `--only` (all without it)."""
    return {
        name: overrides
        for name, overrides in variants[args.recipe].items()
        if not args.only or any(name.startswith(prefix) for prefix in args.only)
    }


def recipe_yaml(recipe: str) -> str:
    """The recipe's YAML beside its script in `recipes/`."""
    return os.path.join(RECIPES, f"{recipe}_classification.yaml")
