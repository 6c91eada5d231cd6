"""User settings: `--set section.field=value` overrides, TOML config files, and the run record.

Order of precedence (later wins): the preset, then the `--config` file, then `--set` on the command
line. Every value is parsed against the type of the preset's dataclass field and checked against
RULES; the overrides are recorded next to the preset in each job's `config.json` (see run_record).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import sys
import tempfile
import tomllib
import typing
from pathlib import Path

from anounet_jax.config import FORMULATION_CHOICES, Preset, get_preset
from anounet_jax.errors import AnoUnetError

_PRESET_TYPES = typing.get_type_hints(Preset)
SECTIONS = {f.name: _PRESET_TYPES[f.name] for f in dataclasses.fields(Preset)
            if dataclasses.is_dataclass(_PRESET_TYPES[f.name])}  # "fit" -> FitConfig, ...
TOP_LEVEL = ("image_size",)  # scalar fields of Preset that may be overridden ("name" may not)

POSITIVE = ("> 0", lambda v: v > 0)
NON_NEGATIVE = (">= 0", lambda v: v >= 0)

# "section.field" (or a top-level field) -> (description, predicate) or a tuple of allowed values.
# A field without a rule is only type-checked.
RULES: dict[str, tuple] = {
    "image_size": POSITIVE,
    "unet.width": POSITIVE, "unet.depth": POSITIVE, "unet.norm": ("batch", "none"),
    "fnet.arch": ("mobilenet_v2", "small_cnn"), "fnet.method": ("l2softmax", "doc"),
    "fnet.alpha": POSITIVE, "fnet.small_cnn_width": POSITIVE, "fnet.alpha_l2": POSITIVE,
    "fnet.doc_lambda": NON_NEGATIVE, "fnet.lr": POSITIVE, "fnet.batch_size": POSITIVE,
    "fnet.epochs": NON_NEGATIVE, "fnet.bn_stats": ("moving", "recompute"),
    "fnet.patch_memory": ("in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    "fit.steps": POSITIVE, "fit.beta": NON_NEGATIVE, "fit.optimizer": ("sgd", "adam"),
    "fit.lr": POSITIVE, "fit.momentum": NON_NEGATIVE, "fit.lc_scale": ("raw", "normal"),
    "fit.spatial_beta": NON_NEGATIVE, "fit.flaw_beta": NON_NEGATIVE, "fit.start": ("cold", "warm"),
    "fit.lc_where": ("everywhere", "start"), "fit.lc_center": ("global", "nearest"),
    "fit.lc_center_k": POSITIVE,
    "data.category": ("brick", "grass", "gravel"), "data.n_train": POSITIVE, "data.n_reference_per_class": POSITIVE,
    "data.n_test_good": NON_NEGATIVE, "data.n_test_defect": POSITIVE,
    "maps.smoothing_sigma": NON_NEGATIVE, "maps.image_score": ("max", "top1"), "maps.deviation": ("none", "absolute", "relative"),
    "maps.deviation_low": NON_NEGATIVE,
    "engine.chunk_size": POSITIVE,
    "engine.formulation": FORMULATION_CHOICES,
    "tiles.tile": NON_NEGATIVE, "tiles.stride": NON_NEGATIVE, "tiles.scale": POSITIVE,
    "tiles.center": ("global", "position"),
    "start.method": ("reptile", "shared"), "start.steps": POSITIVE, "start.inner_steps": POSITIVE,
    "start.batch_size": POSITIVE,
}

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _parse(key: str, kind: type, raw: str):
    """`raw` as a value of type `kind`, or an AnoUnetError naming the key, the type and the value."""
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind is str:
            return text
    except ValueError:
        hint = " (true/false, yes/no or 1/0)" if kind is bool else ""
        raise AnoUnetError(f"setting {key} expects {kind.__name__}{hint}, got {raw!r}") from None
    raise TypeError(f"{key}: unsupported field type {kind!r}")


def _check(key: str, value) -> None:
    rule = RULES.get(key)
    if rule is None:
        return
    if callable(rule[1]):  # (description, predicate)
        if not rule[1](value):
            raise AnoUnetError(f"setting {key} must be {rule[0]}, got {value!r}")
    elif value not in rule:  # a tuple of allowed values
        raise AnoUnetError(f"setting {key} must be one of {list(rule)}, got {value!r}")


def apply_overrides(preset: Preset, overrides: typing.Iterable[str]) -> Preset:
    """`preset` with each `section.field=value` (or `image_size=value`) applied; the name is kept."""
    changes: dict[str, object] = {}
    for item in overrides:
        if "=" not in item:
            raise AnoUnetError(f"setting {item!r} is not KEY=VALUE (e.g. fit.beta=10)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key == "name":
            raise AnoUnetError("setting name cannot be overridden; choose another preset instead")
        if "." not in key:
            if key not in TOP_LEVEL:
                raise AnoUnetError(f"unknown setting {key!r}; use section.field with a section in "
                                   f"{list(SECTIONS)}, or a top-level field in {list(TOP_LEVEL)}")
            value = _parse(key, _PRESET_TYPES[key], raw)
            _check(key, value)
            changes[key] = value
            continue
        section, field = key.split(".", 1)
        if section not in SECTIONS:
            raise AnoUnetError(f"unknown section {section!r} in setting {key!r}; "
                               f"sections are {list(SECTIONS)}")
        types = typing.get_type_hints(SECTIONS[section])
        if field not in types:
            raise AnoUnetError(f"unknown field {field!r} in setting {key!r}; "
                               f"fields of {section} are {list(types)}")
        value = _parse(key, types[field], raw)
        _check(key, value)
        changes.setdefault(section, {})[field] = value
    out = preset.replace(**changes)
    if out.fit.lc_where == "start" and out.fit.start != "warm":
        raise AnoUnetError("setting fit.lc_where=start puts L_C in the warm start only: it needs fit.start=warm")
    if out.fit.flaw_beta > 0 and not (out.fnet.synthetic_flaws and out.fnet.epochs > 0):
        # said before any training: the flaw term reads a head only a trained f-Net with flaws has
        raise AnoUnetError("setting fit.flaw_beta > 0 needs the f-Net's flaw head: add fnet.synthetic_flaws=true "
                           "and fnet.epochs > 0 (e.g. 8)")
    return out


def _scalar(key: str, value, path) -> str:
    if isinstance(value, (dict, list)):
        kind = "a table" if isinstance(value, dict) else "a list"
        raise AnoUnetError(f"{key} must be a single value, got {kind}", path)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def load_config_file(path) -> tuple[str | None, list[str]]:
    """(preset name or None, override strings) from a TOML file: `preset = "small"`, an optional
    top-level `image_size`, and tables `[fit]`, `[unet]`, ... whose keys are the fields."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise AnoUnetError("config file not found", path) from None
    except OSError as e:
        raise AnoUnetError(f"cannot read config file: {e.strerror}", path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # the message has line/column
        raise AnoUnetError(f"not valid TOML: {e}", path) from None
    preset = doc.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise AnoUnetError(f"preset must be a string (a preset name), got {preset!r}", path)
    overrides = []
    for key, value in doc.items():
        if isinstance(value, dict):  # a section table
            overrides += [f"{key}.{k}={_scalar(f'{key}.{k}', v, path)}" for k, v in value.items()]
        else:
            overrides.append(f"{key}={_scalar(key, value, path)}")
    return preset, overrides


def resolve_settings(preset_name_or_preset, config_path=None, overrides=()) -> Preset:
    """The base preset (the config file's `preset` if any, else the argument), then the file's
    settings, then `overrides` (the command line wins)."""
    file_preset, file_overrides = (None, []) if config_path is None else load_config_file(config_path)
    base = file_preset if file_preset is not None else preset_name_or_preset
    preset = get_preset(base) if isinstance(base, str) else base
    try:
        preset = apply_overrides(preset, file_overrides)
    except AnoUnetError as e:
        raise AnoUnetError(e.problem, config_path) from None
    return apply_overrides(preset, list(overrides))


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_record(preset: Preset, *, command: str, overrides=(), extra: dict | None = None) -> dict:
    """What a job writes as `config.json`: the command, the resolved preset, the overrides, the
    versions and device it ran with, and when."""
    import jax

    import anounet_jax

    devices = jax.devices()
    record = {
        "command": command,
        "preset": preset.to_dict(),
        "overrides": list(overrides),
        "versions": {
            "anounet_jax": anounet_jax.__version__,
            **{name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy")},
            "python": sys.version.split()[0],
        },
        "device": {"backend": jax.default_backend(), "kind": devices[0].device_kind,
                   "count": len(devices)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    clash = set(extra or {}) & set(record)
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite the record's own")
    return {**record, **(extra or {})}


def write_run_record(out_dir, record: dict) -> Path:
    """Write `record` to `out_dir/config.json` (pretty JSON, atomically); returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "config.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".config.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def preset_from_record(path_or_dict) -> Preset:
    """The preset of a run record (a dict, a config.json, or a folder holding one)."""
    path = None
    record = path_or_dict
    if not isinstance(path_or_dict, dict):
        path = Path(path_or_dict)
        if path.is_dir():
            path = path / "config.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise AnoUnetError("run record not found", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AnoUnetError(f"run record is not valid JSON: {e}", path) from None
    if not isinstance(record, dict) or not isinstance(record.get("preset"), dict):
        raise AnoUnetError("run record has no 'preset' object", path)
    try:
        return Preset.from_dict(record["preset"])
    except (KeyError, TypeError) as e:
        raise AnoUnetError(f"run record has a malformed 'preset': {e!r}", path) from None


def add_settings_arguments(parser):
    """Add `--set KEY=VALUE` (repeatable; dest `overrides`) and `--config FILE.toml` to `parser`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a preset field, repeatable, e.g. --set fit.beta=10; KEY is section.field "
             f"with a section in {{{', '.join(SECTIONS)}}}, or {', '.join(TOP_LEVEL)} "
             f"(applied after --config)")
    parser.add_argument(
        "--config", metavar="FILE.toml", default=None,
        help="TOML settings: optional preset = \"name\", image_size, and tables [fit], [unet], ...")
    return parser
