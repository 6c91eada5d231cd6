"""Images per second of the fit stage: the cold start (60 steps, the small preset before issue 17)
against the warm start (the preset's fit.steps from its Reptile start), in one process.

    python benchmarks/warm_start_speed.py [--preset small] [--cold-steps 60] [--rounds 3] [--images 60]

Per round, the same test images (the embedded demo data) are fitted once from a random start for
--cold-steps steps and once from the warm start for the preset's fit.steps; each fit is timed end to
end (`Engine.fit`: chunking, transfers, maps), compilation excluded (a warm-up fit of each runs
first). Rounds alternate the two so a drifting machine affects both; the ratio is given per round and
as the median. The warm start's own training time (once per f-Net checkpoint) is printed with the
number of images after which it has paid for itself.
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
    ap.add_argument("--cold-steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=60)
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
    from anounet_jax.engine.warm_start import with_warm_start
    from anounet_jax.fnet.train import train_fnet

    warm_preset = get_preset(args.preset)
    if warm_preset.fit.start != "warm":
        raise SystemExit(f"preset {args.preset} fits cold: nothing to compare")
    cold_preset = warm_preset.replace(fit={"start": "cold", "steps": args.cold_steps})
    ds = load_labelled("embedded", warm_preset, args.seed)
    images = ds.test.images[:args.images]
    reference = load_reference(ds.category, warm_preset.image_size, warm_preset.data.n_reference_per_class, args.seed)
    trained = train_fnet(warm_preset.fnet, ds.train, reference, seed=args.seed, progress=False)
    t0 = time.perf_counter()
    trained = with_warm_start(warm_preset, trained, ds.train.images, seed=args.seed)
    start_s = time.perf_counter() - t0
    engines = {"cold": Engine.for_trained(cold_preset, trained), "warm": Engine.for_trained(warm_preset, trained)}
    for engine in engines.values():  # compile
        engine.fit(images, seed=args.seed)
    per_round = {"cold": [], "warm": []}
    for r in range(args.rounds):
        for name in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            t0 = time.perf_counter()
            engines[name].fit(images, seed=args.seed)
            per_round[name].append(len(images) / (time.perf_counter() - t0))
    ratios = [w / c for w, c in zip(per_round["warm"], per_round["cold"])]
    cold_ips, warm_ips = max(per_round["cold"]), max(per_round["warm"])
    # images after which start_s is repaid: n / warm + start_s = n / cold
    break_even = start_s / (1 / cold_ips - 1 / warm_ips)
    out = {"machine": jax.devices()[0].device_kind, "devices": jax.device_count(), "images": len(images),
           "cold_steps": args.cold_steps, "warm_steps": warm_preset.fit.steps,
           "warm_start": trained.warm_start.describe(), "warm_start_seconds": round(start_s, 1),
           "cold_images_per_s": [round(x, 3) for x in per_round["cold"]],
           "warm_images_per_s": [round(x, 3) for x in per_round["warm"]],
           "ratio_per_round": [round(x, 2) for x in ratios], "ratio_median": round(statistics.median(ratios), 2),
           "break_even_images": round(break_even)}
    print(f"fit stage, {len(images)} images: cold {args.cold_steps} steps {cold_ips:.2f} images/s, warm "
          f"{warm_preset.fit.steps} steps {warm_ips:.2f} images/s; warm/cold per round "
          f"{out['ratio_per_round']} (median {out['ratio_median']}x); start trained in {start_s:.0f} s, "
          f"repaid after {out['break_even_images']} images")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
