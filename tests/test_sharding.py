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
    json.dump(out, sys.stdout)
""")


def test_sharded_fit_equals_single_device():
    import numpy as np

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["sharded_mesh"] == 2 and out["single_mesh"] == 1
    np.testing.assert_allclose(np.array(out["sharded"]), np.array(out["single"]), atol=1e-4)
