"""Sweep configuration: YAML + the JSON schema in workflow/schemas (with its defaults) + semantic checks.

The same function validates the config for the Snakefile (before any job starts) and for every CLI command, so
a config error always reads the same: ``"<source>: <key path>: <what is wrong>"``.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from lossablation.errors import LossAblationError

SCHEMA_RELATIVE = Path("workflow") / "schemas" / "config.schema.yaml"


def schema_path() -> Path:
    """The schema shipped with the workflow (repository checkout) or inside the installed package."""
    repo_schema = Path(__file__).resolve().parents[2] / SCHEMA_RELATIVE
    if repo_schema.is_file():
        return repo_schema
    return Path(str(resources.files("lossablation") / "config.schema.yaml"))


def load_schema() -> dict:
    with open(schema_path(), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _extend_with_defaults(validator_class):
    """A validator that fills ``default`` values while validating (the jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft7Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """Rewrite jsonschema's messages into one short line naming the key."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{key if key != '(top level)' else 'config'}: unknown key {extra[0]!r} (valid: {allowed})"
    if error.validator == "uniqueItems":
        seen, dup = set(), None
        for item in error.instance:
            if item in seen:
                dup = item
                break
            seen.add(item)
        return f"{key}: duplicate value {dup!r}"
    if error.validator == "required":
        return f"{key if key != '(top level)' else 'config'}: {error.message}"
    if error.validator == "type":
        return f"{key}: expected {error.validator_value}, got {error.instance!r}"
    if error.validator == "enum":
        valid = ", ".join(map(str, error.validator_value))
        return f"{key}: {error.instance!r} is not one of: {valid}"
    return f"{key}: {error.message}"


def _check_schema(cfg: dict, source: str) -> None:
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        raise LossAblationError(f"{source}: {_describe(errors[0])}")


def _check_semantics(cfg: dict, source: str) -> None:
    from lossablation.train.losses import check_loss_params  # torch import: only once the schema passed

    arms = cfg["losses"]
    if cfg["baseline"] not in arms:
        raise LossAblationError(
            f"{source}: baseline: {cfg['baseline']!r} is not an arm of losses (arms: {', '.join(arms)})"
        )
    for arm, spec in arms.items():
        try:
            check_loss_params(spec["kind"], spec.get("params"), key=f"losses.{arm}.params")
        except LossAblationError as exc:
            raise LossAblationError(f"{source}: {exc}") from None
    owner: dict[str, str] = {}
    for group, members in cfg["classes"].items():
        for name in members:
            if name in owner:
                raise LossAblationError(f"{source}: classes: {name} is in both {owner[name]} and {group}")
            owner[name] = group
    split = cfg["split"]
    if split["val_fraction"] + split["test_fraction"] >= 0.9:
        raise LossAblationError(f"{source}: split: val_fraction + test_fraction must stay below 0.9")


def _check_paths(cfg: dict, source: str) -> None:
    dataset = Path(cfg["dataset"])
    if not dataset.exists():
        raise LossAblationError(f"{source}: dataset: no such file or folder: {dataset}")
    ckpt = cfg.get("stage1_checkpoint")
    if ckpt is not None and not Path(ckpt).is_file():
        raise LossAblationError(f"{source}: stage1_checkpoint: no such file: {ckpt}")


def load_config(config: str | os.PathLike | Mapping[str, Any], check_paths: bool = True) -> dict:
    """Read (if a path), validate and complete a sweep config; raise LossAblationError naming the key.

    Accepts a YAML path or an already-parsed mapping (as Snakemake's ``config``). Returns a new dict with
    every default filled in.
    """
    if isinstance(config, (str, os.PathLike)):
        source = str(config)
        try:
            with open(config, encoding="utf-8") as handle:
                raw = yaml.safe_load(handle)
        except FileNotFoundError:
            raise LossAblationError(f"{source}: config file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise LossAblationError(f"{source}: not valid YAML{where}") from None
    else:
        source, raw = "config", config
    if not isinstance(raw, dict):
        raise LossAblationError(f"{source}: expected a mapping of keys at the top level")
    cfg = copy.deepcopy(dict(raw))
    _check_schema(cfg, source)
    _check_semantics(cfg, source)
    if check_paths:
        _check_paths(cfg, source)
    return cfg


def training_device(cfg: Mapping[str, Any]) -> str:
    """Resolve ``device: auto`` to ``cuda`` when a GPU is visible, else ``cpu``."""
    device = cfg["device"]
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
