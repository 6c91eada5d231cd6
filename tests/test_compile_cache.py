"""The on-disk compilation cache the CLI turns on: a second process finds the first one's programs."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = """
import sys, time, jax, jax.numpy as jnp
from anounet_jax.engine.devices import enable_compilation_cache
folder = enable_compilation_cache(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even this small program
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(folder)
"""


def _run(cache, env_cache=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ANOUNET_CACHE_DIR", None)
    if env_cache is not None:
        env["ANOUNET_CACHE_DIR"] = env_cache
    return subprocess.run([sys.executable, "-c", CODE, cache], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_programs_are_kept_on_disk_and_found_again(tmp_path):
    cache = tmp_path / "xla"
    assert _run(str(cache)) == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "nothing was written to the compilation cache"
    _run(str(cache))  # the same program again: read back, not written a second time
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_the_cache_folder_defaults_and_can_be_turned_off(tmp_path, monkeypatch):
    from anounet_jax.engine import devices

    monkeypatch.setenv("ANOUNET_CACHE_DIR", "off")
    assert devices.enable_compilation_cache() is None
    monkeypatch.setenv("ANOUNET_CACHE_DIR", str(tmp_path / "c"))
    assert devices.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ANOUNET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert devices.default_cache_dir() == tmp_path / "xdg" / "anounet_jax" / "xla"
