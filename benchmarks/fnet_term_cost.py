"""What the f-Net inside the fit costs: the small preset's fit and its Reptile start with L_C (the
preset's beta) against the same at beta 0, where the f-Net leaves the training steps (engine/steps.py
`global_term`; engine/warm_start.py), in one process.

    python benchmarks/fnet_term_cost.py [--preset small] [--rounds 3] [--images 48] [--start-steps 10]

Per round, each variant fits the same test images (embedded demo data) end to end (`Engine.fit`) and
trains --start-steps outer steps of the preset's Reptile start; compilation is excluded (a warm-up
of each runs first). Rounds alternate the order so a drifting machine affects both; ratios are per
round and their median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--start-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()
    enable_compilation_cache()
    import jax

    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.engine.fit import Engine
    from anounet_jax.engine.warm_start import make_start
    from anounet_jax.fnet.train import train_fnet

    preset = get_preset(args.preset)
    if preset.fit.beta == 0:
        raise SystemExit(f"preset {args.preset} has beta 0 already: nothing to compare")
    presets = {"with L_C": preset, "beta 0": preset.replace(fit={"beta": 0.0})}
    ds = load_labelled("embedded", preset, args.seed)
    images = ds.test.images[:args.images]
    reference = load_reference(ds.category, preset.image_size, preset.data.n_reference_per_class, args.seed)
    trained = train_fnet(preset.fnet, ds.train, reference, seed=args.seed, progress=False)
    start = {**preset.start.__dict__, "steps": args.start_steps}

    def run_start(p):
        return make_start(p.replace(start=start), trained, ds.train.images, seed=args.seed)

    start_params = run_start(preset).params
    engines = {k: Engine.for_trained(p, trained, start_params=start_params) for k, p in presets.items()}
    for k in presets:  # compile
        engines[k].fit(images, seed=args.seed)
        run_start(presets[k])
    fit_s, start_s = {k: [] for k in presets}, {k: [] for k in presets}
    for r in range(args.rounds):
        for k in (list(presets) if r % 2 == 0 else list(presets)[::-1]):
            t0 = time.perf_counter()
            engines[k].fit(images, seed=args.seed)
            fit_s[k].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_start(presets[k])
            start_s[k].append(time.perf_counter() - t0)
    a, b = presets
    fit_ratio = [x / y for x, y in zip(fit_s[a], fit_s[b])]
    start_ratio = [x / y for x, y in zip(start_s[a], start_s[b])]
    out = {"machine": jax.devices()[0].device_kind, "devices": jax.device_count(), "images": len(images),
           "fit_steps": preset.fit.steps, "start_steps": args.start_steps,
           "fit_seconds": {k: [round(x, 2) for x in v] for k, v in fit_s.items()},
           "start_seconds": {k: [round(x, 2) for x in v] for k, v in start_s.items()},
           "fit_speedup_per_round": [round(x, 2) for x in fit_ratio],
           "start_speedup_per_round": [round(x, 2) for x in start_ratio],
           "fit_speedup_median": round(statistics.median(fit_ratio), 2),
           "start_speedup_median": round(statistics.median(start_ratio), 2)}
    print(f"beta 0 against beta {preset.fit.beta}: fit {out['fit_speedup_median']}x faster "
          f"(per round {out['fit_speedup_per_round']}), Reptile start {out['start_speedup_median']}x "
          f"(per round {out['start_speedup_per_round']})")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
