"""Sweep configuration: read (strict YAML), validate once (schema + semantics), complete with the schema's defaults.

One function, :func:`load_config`, serves every CLI command and the Snakefile, so a config error always reads
the same: ``"<file>: <key path>: <what is wrong>"`` on one line, control characters escaped. After it returns,
every key that has a default in the schema (``config.schema.yaml``, package data next to this module) is present,
nested ones included: the rest of the package indexes the config and never repeats a default.

What the schema cannot say is checked here: integers are never floats or booleans and numbers are finite (the
type checker), loss kinds and parameters (:func:`lossablation.train.losses.check_loss_params`), partition names
(:data:`lossablation.classes.PARTITION_NAMES`), ``val_fraction + test_fraction``, ``results`` not the root.

A YAML file is read strictly: UTF-8 text, at most 1 MiB, no key written twice in one mapping (PyYAML would keep
the last silently), no nesting deeper than 16 or structure larger than 100,000 values (aliases can multiply).
Values given on Snakemake's command line (``--config 'seeds=[1,2]'``) arrive as strings; those, and only those,
are converted to the schema's integer / number / boolean / null when the text is exactly such a literal.

(Slightly over 400 lines: reading, converting, validating and naming the culprit's file are one pipeline sharing
``_Problem``; split the strict YAML reader out first if it grows.)
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jsonschema
import yaml

from lossablation.errors import LossAblationError, safe_text

SCHEMA_FILE = "config.schema.yaml"
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 16
MAX_FRACTIONS = 0.9  # val_fraction + test_fraction stays below this: training keeps at least 10 % of the blocks
COMMAND_LINE = "--config"


class _Problem(Exception):
    """A config problem at ``path`` (shown in the message) caused by the value at ``culprit`` (names the file)."""

    def __init__(self, path: Sequence, text: str, culprit: Sequence | None = None) -> None:
        super().__init__(text)
        self.path, self.text = tuple(path), text
        self.culprit = tuple(path) if culprit is None else tuple(culprit)


# ---------------------------------------------------------------------------------------------- the schema
@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("lossablation").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema() -> dict:
    """The config schema (a fresh copy), read from the installed package."""
    return yaml.safe_load(_schema_text())


def _is_integer(_checker, instance) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(_checker, instance) -> bool:
    """Finite ints and floats; not booleans (``True`` is an int to Python, not a number to a config)."""
    return _is_integer(_checker, instance) or (isinstance(instance, float) and math.isfinite(instance))


def _extend_with_defaults(validator_class):
    """Strict types, and ``default`` values filled while validating (the jsonschema FAQ recipe).

    A default object (``train: {}``) is filled before its own properties are validated, so the defaults of an
    absent section's keys are filled too.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    types = validator_class.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=types)


_Validator = _extend_with_defaults(jsonschema.Draft7Validator)


# ---------------------------------------------------------------------------------------------- reading a file
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (YAML forbids it; PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base class says so
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {_show(key)} written twice in one mapping (first on line {first_line[key]})",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        where = f" (line {mark.line + 1})"
    elif isinstance(exc, yaml.reader.ReaderError):
        where = f" (line {text.count(chr(10), 0, exc.position) + 1})"
    else:
        where = ""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
    return f"not valid YAML{where}" + (f": {problem}" if problem else "")


def _read_text(path: str | os.PathLike) -> str:
    """The file's text; a missing file, a folder, a device, a huge or a non-UTF-8 file is a one-line _Problem."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _Problem((), "is a folder, not a config file" if stat.S_ISDIR(mode) else "is not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise _Problem((), "config file not found") from None
    except OSError as exc:
        raise _Problem((), f"cannot read the config file ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _Problem((), f"config file larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Problem((), f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if "\x00" in text:
        raise _Problem((), "not a text file (it contains NUL bytes)")
    return text


def _read_yaml(path: str | os.PathLike) -> Any:
    text = _read_text(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _Problem((), _yaml_error(exc, text)) from None
    except RecursionError:
        raise _Problem((), "not valid YAML: nested too deeply") from None


def _check_size(raw: Any) -> None:
    """Bound the structure before validating it: a few aliases can make a small file describe billions of values."""
    stack, count = [(raw, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise _Problem((), f"more than {MAX_VALUES} values (aliases that multiply?)")
        if depth > MAX_DEPTH:
            raise _Problem((), f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)


# ---------------------------------------------------------------------------------------------- command-line values
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NULL_TEXT = frozenset({"null", "Null", "NULL", "~"})
_BOOLEAN_TEXT = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _parse_literal(text: str, types: Iterable[str]) -> Any:
    """``text`` as the schema's type when it is exactly such a literal (YAML 1.2 core spelling), else unchanged."""
    types = set(types)
    if "null" in types and text in _NULL_TEXT:
        return None
    if "string" in types:
        return text
    if types & {"integer", "number"} and _INTEGER_TEXT.fullmatch(text):
        return int(text)
    if "number" in types and _NUMBER_TEXT.fullmatch(text):
        return float(text)
    if "boolean" in types and text in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[text]
    return text


def _coerce(value: Any, schema: Mapping, root: Mapping) -> Any:
    """Snakemake's ``--config`` values with their strings converted where the schema asks for another type."""
    while "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(value, Mapping):
        extra = schema.get("additionalProperties")
        fallback = extra if isinstance(extra, Mapping) else {}
        return {key: _coerce(item, schema.get("properties", {}).get(key, fallback), root)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_coerce(item, schema.get("items", {}), root) for item in value]
    if isinstance(value, str):
        types = schema.get("type", [])
        return _parse_literal(value, [types] if isinstance(types, str) else types)
    return value


def _merge(base: dict, overrides: Mapping) -> None:
    """Recursive update, as Snakemake merges ``--config`` into the config files."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


# ---------------------------------------------------------------------------------------------- messages
def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message stays one short line whatever the file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_duplicate(items: Sequence) -> Any:
    return next(item for position, item in enumerate(items) if item in items[:position])


def _describe(error: jsonschema.ValidationError) -> _Problem:
    """jsonschema's error as one short line naming the key."""
    path, kind, value, rule = tuple(error.absolute_path), error.validator, error.instance, error.validator_value
    if "propertyNames" in error.absolute_schema_path:  # a bad name: jsonschema reports it at the parent's path
        return _Problem(path, f"{_show(value)} is not {error.schema.get('x-expected', 'a valid name')}", path + (value,))
    if kind == "additionalProperties":
        allowed = error.schema.get("properties", {})
        extra = next(key for key in value if key not in allowed)
        return _Problem(path, f"unknown key {_show(extra)} (valid: {', '.join(allowed)})", path + (extra,))
    if kind == "required":
        return _Problem(path, f"missing required key {next(name for name in rule if name not in value)!r}")
    if kind == "uniqueItems":
        return _Problem(path, f"duplicate value {_show(_first_duplicate(value))}")
    if kind == "type":
        wanted = " or ".join([rule] if isinstance(rule, str) else rule)
        if isinstance(value, float) and not math.isfinite(value) and "number" in wanted:
            wanted = f"a finite {wanted}"
        return _Problem(path, f"expected {wanted}, got {_show(value)}")
    if kind == "enum":
        return _Problem(path, f"{_show(value)} is not one of: {', '.join(map(str, rule))}")
    if kind == "pattern":
        return _Problem(path, f"{_show(value)} is not {error.schema.get('x-expected', f'matching {rule}')}")
    if kind in ("minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength"):
        what = {"I": "items", "P": "entries", "L": "characters"}[kind[3]]
        bound = "at least" if kind.startswith("min") else "at most"
        return _Problem(path, f"has {len(value)} {what}; {bound} {rule} allowed")
    return _Problem(path, error.message)


def _value_at(data: Any, path: Sequence) -> tuple[int, Any]:
    """How many leading keys of ``path`` exist in ``data``, and the value reached."""
    depth = 0
    for key in path:
        if isinstance(data, Mapping) and key in data:
            data, depth = data[key], depth + 1
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data, depth = data[key], depth + 1
        else:
            break
    return depth, data


def _source_of(culprit: Sequence, cfg: Mapping, layers: Sequence[tuple[str, Any]], merged: str) -> str:
    """The file(s) or ``--config`` that wrote the culprit: those holding its final value (same type and value),
    else those holding the deepest part of its key path, else ``merged`` (the culprit is a default)."""
    final = repr(_value_at(cfg, culprit)[1])
    scores = {}
    for label, data in layers:
        depth, value = _value_at(data, culprit)
        if depth:
            scores[label] = (depth == len(culprit) and repr(value) == final, depth)
    best = max(scores.values(), default=None)
    return " + ".join(label for label, score in scores.items() if score == best) or merged


def _error(source: str, problem: _Problem) -> LossAblationError:
    key = ".".join(str(part) for part in problem.path)
    return LossAblationError(safe_text(f"{source}: {key}: {problem.text}" if key else f"{source}: {problem.text}"))


# ---------------------------------------------------------------------------------------------- checks
def _check_schema(cfg: dict) -> None:
    errors = list(_Validator(load_schema()).iter_errors(cfg))
    if errors:
        first = min(errors, key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]))
        raise _describe(first)


def _check_results(results: str) -> None:
    if not results.strip():
        raise _Problem(("results",), "empty: give the folder for the sweep's outputs")
    if results != results.strip() or not results.isprintable():
        raise _Problem(("results",), f"{_show(results)} starts or ends with blanks or holds control characters")
    resolved = Path(os.path.realpath(results))
    if resolved.parent == resolved:
        raise _Problem(("results",), f"{_show(results)} is the filesystem root: give a folder for the outputs")


def _check_losses(cfg: Mapping) -> None:
    from lossablation.train.losses import LOSS_FUNCTIONS, check_loss_params  # torch: only once the schema passed

    arms = cfg["losses"]
    if cfg["baseline"] not in arms:
        raise _Problem(("baseline",), f"{_show(cfg['baseline'])} is not an arm of losses (arms: {', '.join(arms)})")
    for arm, spec in arms.items():
        field = "params" if spec["kind"] in LOSS_FUNCTIONS else "kind"
        try:
            check_loss_params(spec["kind"], spec["params"], key=f"losses.{arm}.{field}")
        except LossAblationError as exc:
            raise _Problem((), str(exc), ("losses", arm, field)) from None


def _check_hypotheses(arms: Mapping) -> None:
    """The optional ``hypothesis`` block of each arm: an ordered range and a known secondary check."""
    from lossablation.analysis.hypotheses import SECONDARY_CHECKS

    for arm, spec in arms.items():
        hyp = spec.get("hypothesis")
        if hyp is None:
            continue
        low, high = hyp["predicted_gain_pp"]
        if low > high:
            raise _Problem(("losses", arm, "hypothesis", "predicted_gain_pp"),
                           f"[{low:g}, {high:g}]: the low end is above the high end")
        if "secondary" in hyp and hyp["secondary"] not in SECONDARY_CHECKS:
            raise _Problem(("losses", arm, "hypothesis", "secondary"), f"{_show(hyp['secondary'])} is not a "
                           f"known check (valid: {', '.join(SECONDARY_CHECKS)})")


def _check_classes(groups: Mapping[str, list]) -> None:
    from lossablation.classes import PARTITION_NAMES

    valid = PARTITION_NAMES[1:]  # NONE is Stage 1's negative class, never a Stage-2 partition
    owner: dict[str, str] = {}
    for group, members in groups.items():
        for position, name in enumerate(members):
            if name not in valid:
                raise _Problem(("classes", group), f"{_show(name)} is not an AV1 partition of Stage 2 "
                               f"(valid: {', '.join(valid)})", ("classes", group, position))
            if name in owner:
                raise _Problem(("classes",), f"{name} is in both {owner[name]} and {group}", ("classes", group))
            owner[name] = group


def _check_semantics(cfg: dict) -> None:
    _check_results(cfg["results"])
    _check_losses(cfg)
    _check_hypotheses(cfg["losses"])
    _check_classes(cfg["classes"])
    split = cfg["split"]
    if split["val_fraction"] + split["test_fraction"] >= MAX_FRACTIONS:
        raise _Problem(("split",), f"val_fraction + test_fraction must stay below {MAX_FRACTIONS}")


def _check_paths(cfg: dict) -> None:
    if not Path(cfg["dataset"]).exists():
        raise _Problem(("dataset",), f"no such file or folder: {cfg['dataset']}")
    ckpt = cfg["stage1_checkpoint"]
    if ckpt is not None and not Path(ckpt).is_file():
        raise _Problem(("stage1_checkpoint",), f"no such file: {ckpt}")
    results = Path(cfg["results"])
    if results.exists() and not results.is_dir():
        raise _Problem(("results",), f"{cfg['results']} exists and is not a folder")


# ---------------------------------------------------------------------------------------------- the entry point
def _read_layer(path: str | os.PathLike) -> tuple[str, Any]:
    try:
        return str(path), _read_yaml(path)
    except _Problem as problem:
        raise _error(str(path), problem) from None


def _apply_command_line(cfg: dict, command_line: Mapping[str, Any]) -> dict:
    """Merge Snakemake's ``--config`` values, their strings converted to the schema's types, over ``cfg``."""
    _check_size(command_line)
    schema = load_schema()
    overrides = _coerce(command_line, schema, schema)
    _merge(cfg, overrides)
    return overrides


def load_config(config: str | os.PathLike | Mapping[str, Any], *, check_paths: bool = True,
                files: Sequence[str | os.PathLike] = (), command_line: Mapping[str, Any] | None = None) -> dict:
    """Read (if a path), validate and complete a sweep config; raise one-line LossAblationError naming key and file.

    ``config`` is a YAML file or an already merged mapping (the Snakefile's ``config``). For the Snakefile, give
    ``files``, the config files Snakemake merged (re-read here strictly, and named in messages), and
    ``command_line``, Snakemake's parsed ``--config`` values: their strings are converted to the schema's types
    and merged over ``config`` as Snakemake merged them; a YAML file's values are never converted (a quoted
    ``"128"`` stays a string, and is refused where an integer is meant). Returns a new dict with every default
    filled in; ``check_paths`` also requires ``dataset`` and ``stage1_checkpoint`` to exist and an existing
    ``results`` to be a folder.
    """
    if isinstance(config, (str, os.PathLike)):
        layers = [_read_layer(config)]
        source, raw = layers[0]
    else:
        layers = [_read_layer(path) for path in files]
        labels = [label for label, _ in layers] + ([COMMAND_LINE] if command_line else [])
        source, raw = " + ".join(labels) or "config", config
    cfg: dict = {}
    try:
        if not isinstance(raw, Mapping):
            raise _Problem((), "expected a mapping of keys at the top level")
        _check_size(raw)
        cfg = copy.deepcopy(dict(raw))
        if command_line:
            layers.append((COMMAND_LINE, _apply_command_line(cfg, command_line)))
        _check_schema(cfg)
        _check_semantics(cfg)
        if check_paths:
            _check_paths(cfg)
    except _Problem as problem:
        raise _error(_source_of(problem.culprit, cfg, layers, source), problem) from None
    return cfg


def training_device(cfg: Mapping[str, Any]) -> str:
    """Resolve ``device: auto`` to ``cuda`` when a GPU is visible, else ``cpu`` (the one place this is decided).

    Call it where the training runs (inside the job: ``lossablation.train.environment.torch_device``), never on
    the host that plans a sweep: a cluster's login node has no GPU. The workflow requests a GPU for every
    training job unless ``device: cpu`` (``lossablation.jobs.gpus_per_job``).
    """
    device = cfg["device"]
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
