"""The image axis sharded over (simulated) devices gives the single-device results."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from anounet_jax.config import TINY
    from anounet_jax.engine.fit import Engine
    from anounet_jax.models.small_cnn import SmallCNN
    from anounet_jax.fnet.model import FrozenFNet
    import dataclasses
    assert jax.device_count() == 2, jax.devices()
    m = SmallCNN(width=4, features=8)
    x = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    fnet = FrozenFNet.from_module(m, m.init(jax.random.PRNGKey(0), x[:2]))
    fit = dataclasses.replace(TINY.fit, steps=3, optimizer="sgd", lr=1e-2)
    c = np.full(8, 0.1, np.float32)
    out = {}
    for name, devs in (("sharded", jax.devices()), ("single", jax.devices()[:1])):
        eng = Engine(TINY.unet, fit, fnet, c, formulation="vmap_matmul", chunk_size=4, devices=devs)
        r = eng.fit(x, seed=0)
        out[name] = r.heatmap.tolist()
        out[name + "_chunk"] = eng.chunk_size
        out[name + "_mesh"] = int(eng.mesh.devices.size)
    for name, devs in (("loop_2dev", jax.devices()), ("loop_1dev", jax.devices()[:1])):
        eng = Engine(TINY.unet, fit, fnet, c, formulation="loop", devices=devs)
        out[name] = eng.fit(x, seed=0).heatmap.tolist()
        out[name + "_devices"] = int(eng.mesh.devices.size)
        out[name + "_compilations"] = eng.programs["steps"]._cache_size()  # one program for all devices
    from anounet_jax.engine.devices import split_cpu_into_devices
    out["split_after_start"] = split_cpu_into_devices(4)  # too late: refused, nothing changes
    out["devices_after"] = jax.device_count()
    json.dump(out, sys.stdout)
""")


def test_sharded_fit_equals_single_device():
    """Every formulation splits a chunk over the devices (loop: one image per device at a time)."""
    import numpy as np

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["sharded_mesh"] == 2 and out["single_mesh"] == 1
    np.testing.assert_allclose(np.array(out["sharded"]), np.array(out["single"]), atol=1e-4)
    assert out["loop_2dev_devices"] == 2 and out["loop_1dev_devices"] == 1
    assert out["loop_2dev_compilations"] == 1  # compiled once, run on both devices (not once per device)
    # one program over two devices is compiled apart from the one-device program: XLA:CPU may order
    # float additions differently, so equal up to rounding (bitwise for the same device count)
    np.testing.assert_allclose(np.array(out["loop_2dev"]), np.array(out["loop_1dev"]), atol=1e-4)
    assert out["split_after_start"] is False and out["devices_after"] == 2


def test_cli_splits_the_cpu_into_one_device_per_core():
    code = ("import jax; from anounet_jax.engine.devices import split_cpu_into_devices; "
            "assert split_cpu_into_devices(); print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for extra, want in (({}, len(os.sched_getaffinity(0))), ({"ANOUNET_CPU_DEVICES": "3"}, 3)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, JAX_PLATFORMS="cpu", **extra), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert int(proc.stdout.strip().splitlines()[-1]) == want
