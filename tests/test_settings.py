import argparse
import json

import pytest

from anounet_jax.config import SMALL, TINY, Preset
from anounet_jax.errors import AnoUnetError
from anounet_jax.settings import (
    SECTIONS,
    add_settings_arguments,
    apply_overrides,
    load_config_file,
    preset_from_record,
    resolve_settings,
    run_record,
    write_run_record,
)


def test_typed_overrides_of_every_kind():
    p = apply_overrides(TINY, ["fit.steps=100", "fit.beta=10.5", "fit.optimizer=sgd",
                               "fnet.augment=false", "unet.width=32", "maps.smoothing_sigma=1.5",
                               "engine.chunk_size=8", "image_size=96", "data.n_test_good=0"])
    assert p.fit.steps == 100 and type(p.fit.steps) is int
    assert p.fit.beta == 10.5 and p.fit.optimizer == "sgd"
    assert p.fnet.augment is False and p.unet.width == 32
    assert p.maps.smoothing_sigma == 1.5 and p.engine.chunk_size == 8
    assert p.image_size == 96 and p.data.n_test_good == 0
    assert p.name == "tiny"  # the name is kept; overrides are recorded separately
    assert p.fit.lr == TINY.fit.lr and p.unet.depth == TINY.unet.depth  # the rest is untouched
    assert apply_overrides(TINY, []) == TINY


def test_int_for_float_field_bool_spellings_and_last_wins():
    p = apply_overrides(TINY, ["fit.beta=10", "fnet.augment=YES", "fit.lr=1e-4", "fit.steps=5",
                               "fit.steps=7"])
    assert p.fit.beta == 10.0 and type(p.fit.beta) is float
    assert p.fnet.augment is True and p.fit.lr == 1e-4 and p.fit.steps == 7
    for text, want in [("true", True), ("False", False), ("1", True), ("0", False), ("no", False)]:
        assert apply_overrides(TINY, [f"fnet.augment={text}"]).fnet.augment is want


@pytest.mark.parametrize("item, words", [
    ("fit.steps=1.5", ["fit.steps", "int", "'1.5'"]),
    ("fit.steps=abc", ["fit.steps", "int", "'abc'"]),
    ("fit.beta=high", ["fit.beta", "float", "'high'"]),
    ("fnet.augment=maybe", ["fnet.augment", "bool", "'maybe'"]),
    ("image_size=big", ["image_size", "int", "'big'"]),
])
def test_wrong_types_rejected(item, words):
    with pytest.raises(AnoUnetError) as e:
        apply_overrides(TINY, [item])
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_field_lists_the_fields_of_its_section():
    with pytest.raises(AnoUnetError, match="fit.stepz") as e:
        apply_overrides(TINY, ["fit.stepz=3"])
    for field in ("steps", "beta", "optimizer", "lr", "momentum"):
        assert field in str(e.value)


def test_unknown_section_lists_the_sections():
    with pytest.raises(AnoUnetError, match="'optim'") as e:
        apply_overrides(TINY, ["optim.lr=3"])
    for section in ("unet", "fnet", "fit", "data", "maps", "engine"):
        assert section in str(e.value)
    assert list(SECTIONS) == ["unet", "fnet", "fit", "data", "maps", "engine", "tiles", "start"]
    with pytest.raises(AnoUnetError, match="image_size"):
        apply_overrides(TINY, ["steps=3"])  # a bare unknown key names the top-level fields too


def test_malformed_and_name_rejected():
    with pytest.raises(AnoUnetError, match="KEY=VALUE"):
        apply_overrides(TINY, ["fit.steps"])
    with pytest.raises(AnoUnetError, match="name cannot be overridden"):
        apply_overrides(TINY, ["name=mine"])


@pytest.mark.parametrize("item, words", [
    ("fit.steps=0", ["fit.steps", "> 0"]),
    ("unet.width=-4", ["unet.width", "> 0"]),
    ("engine.chunk_size=0", ["engine.chunk_size", "> 0"]),
    ("image_size=0", ["image_size", "> 0"]),
    ("data.n_test_good=-1", ["data.n_test_good", ">= 0"]),
    ("data.n_train=0", ["data.n_train", "> 0"]),
    ("fit.beta=-1", ["fit.beta", ">= 0"]),
    ("fit.lr=0", ["fit.lr", "> 0"]),
    ("maps.smoothing_sigma=-0.5", ["maps.smoothing_sigma", ">= 0"]),
    ("fit.optimizer=rmsprop", ["fit.optimizer", "'sgd'", "'adam'", "'rmsprop'"]),
    ("unet.norm=layer", ["unet.norm", "'batch'", "'none'"]),
    ("fnet.arch=resnet", ["fnet.arch", "'small_cnn'"]),
    ("fnet.method=svdd", ["fnet.method", "'doc'"]),
    ("data.category=wood", ["data.category", "'grass'"]),
    ("engine.formulation=fast", ["engine.formulation", "'vmap_conv'", "'measure'"]),
    ("maps.deviation=median", ["maps.deviation", "'relative'", "'median'"]),
    ("maps.deviation_low=-1", ["maps.deviation_low", ">= 0"]),
])
def test_range_and_choice_checks(item, words):
    with pytest.raises(AnoUnetError) as e:
        apply_overrides(TINY, [item])
    for w in words:
        assert w in str(e.value)


def test_choice_fields_accept_their_values():
    p = apply_overrides(TINY, ["engine.formulation=loop", "fnet.method=doc", "unet.norm=none",
                               "data.category=grass", "fit.momentum=0", "maps.deviation=absolute",
                               "maps.deviation_low=0.25"])
    assert (p.engine.formulation, p.fnet.method, p.unet.norm) == ("loop", "doc", "none")
    assert p.maps.deviation == "absolute" and p.maps.deviation_low == 0.25
    assert p.data.category == "grass" and p.fit.momentum == 0.0


def _write(tmp_path, text, name="settings.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_file_applied_then_command_line_wins(tmp_path):
    path = _write(tmp_path, 'image_size = 48\n[fit]\nsteps = 12\nbeta = 3\nlr = 1e-4\n'
                            'optimizer = "sgd"\n[fnet]\naugment = false\n')
    name, overrides = load_config_file(path)
    assert name is None
    assert "fit.steps=12" in overrides and "fnet.augment=false" in overrides
    p = resolve_settings("tiny", path, ["fit.steps=99"])
    assert p.fit.steps == 99  # --set wins over --config
    assert p.fit.beta == 3.0 and p.fit.lr == 1e-4 and p.fit.optimizer == "sgd"
    assert p.fnet.augment is False and p.image_size == 48 and p.name == "tiny"
    assert resolve_settings(TINY, None, ["fit.beta=2"]).fit.beta == 2.0  # a Preset works too


def test_preset_in_file_selects_the_base(tmp_path):
    path = _write(tmp_path, 'preset = "tiny"\n[fit]\nsteps = 3\n')
    assert load_config_file(path) == ("tiny", ["fit.steps=3"])
    p = resolve_settings("small", path)
    assert p.name == "tiny" and p.unet == TINY.unet and p.fit.steps == 3
    assert resolve_settings("small") == SMALL


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, '[fit]\nsteps = 3\nbeta = = 2\n', name="broken.toml")
    with pytest.raises(AnoUnetError) as e:
        load_config_file(path)
    msg = str(e.value)
    assert "broken.toml" in msg and "line 3" in msg and "\n" not in msg


def test_missing_file_and_nested_values_rejected(tmp_path):
    with pytest.raises(AnoUnetError, match="not found") as e:
        load_config_file(tmp_path / "nope.toml")
    assert "nope.toml" in str(e.value)
    with pytest.raises(AnoUnetError, match="fit.steps.*list"):
        load_config_file(_write(tmp_path, "[fit]\nsteps = [1, 2]\n"))
    with pytest.raises(AnoUnetError, match="fit.inner.*table"):
        load_config_file(_write(tmp_path, "[fit.inner]\nx = 1\n"))
    with pytest.raises(AnoUnetError, match="preset must be a string"):
        load_config_file(_write(tmp_path, "preset = 3\n"))


def test_bad_value_in_file_names_the_file(tmp_path):
    path = _write(tmp_path, "[fit]\nsteps = 1.5\n", name="bad.toml")
    with pytest.raises(AnoUnetError, match="fit.steps expects int") as e:
        resolve_settings("tiny", path)
    assert "bad.toml" in str(e.value)


def test_run_record_round_trip(tmp_path):
    preset = apply_overrides(TINY, ["fit.beta=10"])
    record = run_record(preset, command="score", overrides=["fit.beta=10"], extra={"seed": 3})
    assert record["command"] == "score" and record["overrides"] == ["fit.beta=10"]
    assert record["seed"] == 3
    assert set(record["versions"]) == {"anounet_jax", "jax", "jaxlib", "flax", "optax", "numpy",
                                       "python"}
    assert record["versions"]["jax"] and record["versions"]["python"]
    assert set(record["device"]) == {"backend", "kind", "count"} and record["device"]["count"] >= 1
    assert record["created"].endswith("+00:00")
    path = write_run_record(tmp_path / "run", record)
    assert path.name == "config.json" and json.loads(path.read_text()) == record
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left
    assert preset_from_record(path) == preset
    assert preset_from_record(path.parent) == preset
    assert preset_from_record(record) == preset
    assert isinstance(preset_from_record(record), Preset)
    with pytest.raises(ValueError):
        run_record(preset, command="score", extra={"preset": {}})


def test_preset_from_record_errors(tmp_path):
    with pytest.raises(AnoUnetError, match="not found"):
        preset_from_record(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnoUnetError, match="bad.json.*not valid JSON"):
        preset_from_record(bad)
    with pytest.raises(AnoUnetError, match="no 'preset'"):
        preset_from_record({"command": "score"})
    with pytest.raises(AnoUnetError, match="malformed"):
        preset_from_record({"preset": {"name": "x"}})


def test_argparse_helper_parses_repeated_set():
    parser = add_settings_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--set", "fit.beta=10", "--set", "unet.width=8", "--config", "a.toml"])
    assert args.overrides == ["fit.beta=10", "unet.width=8"] and args.config == "a.toml"
    args = parser.parse_args([])
    assert args.overrides == [] and args.config is None
    assert "fnet" in parser.format_help() and "KEY=VALUE" in parser.format_help()


def test_a_flaw_weight_without_a_flaw_trained_fnet_is_refused_before_training():
    with pytest.raises(AnoUnetError, match="synthetic_flaws"):
        apply_overrides(SMALL, ["fit.flaw_beta=0.3"])  # the small preset's f-Net is untrained
    with pytest.raises(AnoUnetError, match="synthetic_flaws"):
        apply_overrides(SMALL, ["fit.flaw_beta=0.3", "fnet.synthetic_flaws=true"])  # still epochs 0
    p = apply_overrides(SMALL, ["fit.flaw_beta=0.3", "fnet.synthetic_flaws=true", "fnet.epochs=8"])
    assert p.fit.flaw_beta == 0.3 and p.fnet.synthetic_flaws and p.fnet.epochs == 8
