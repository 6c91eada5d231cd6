"""Do the f-Net's local features see a defect at all? Pixel AUROC per defect kind of two maps read
straight off the f-Net, no per-image fit: the feature-memory distance (PatchCore-style, one map per
choice of layers) and the flaw head's logits (fnet.synthetic_flaws, fnet/flaw_head.py). A local f-Net
term (fit.spatial_beta, fit.flaw_beta) can only rewrite what its features see. For TUNING families.

    python benchmarks/local_detectors.py [--data leather,grain] [--memory-layers stride2,stride4+stride8]
                                         [--flaw-epochs 8] [--preset small]

--memory-layers: comma-separated layer sets, each "+"-joined (empty: none), read from the preset's f-Net;
--flaw-epochs: train an f-Net with synthetic flaws (BatchNorm statistics recomputed) for its head (0: none).
Prints one line per family and map: pixel AUROC, AUPRO, image AUROC (map max) and pixel AUROC per kind.
"""

from __future__ import annotations

import argparse
import sys
import time


def _report(family, name, maps, test):
    from anounet_jax.jobs.evaluate import _by_kind
    from anounet_jax.maps import smooth
    from anounet_jax.metrics import map_metrics

    maps = smooth(maps, 2.0)
    score = maps.reshape(len(maps), -1).max(1)
    m = map_metrics(maps, score, test.labels, test.masks)
    kinds = " ".join(f"{k} {v['pixel_auroc']:.3f}" for k, v in _by_kind(maps, score, test).items())
    print(f"{family} {name}: pixel {m['pixel_auroc']:.3f} AUPRO {m['aupro']:.3f} image {m['image_auroc']:.3f} | "
          f"{kinds}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="leather,grain")
    ap.add_argument("--memory-layers", default="stride2,stride4,stride2+stride4,stride4+stride8,stride8")
    ap.add_argument("--flaw-epochs", type=int, default=8)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import split_cpu_into_devices

    split_cpu_into_devices()
    import jax

    from anounet_jax.baselines import feature_memory
    from anounet_jax.baselines.configs import FeatureMemoryConfig
    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.fnet.train import train_fnet

    preset = get_preset(args.preset)
    layer_sets = [tuple(s.split("+")) for s in args.memory_layers.split(",") if s]
    for family in args.data.split(","):
        t0 = time.perf_counter()
        ds = load_labelled(f"synthetic:{family}", preset, args.seed)
        test = ds.test
        reference = load_reference(ds.category, preset.image_size, preset.data.n_reference_per_class, args.seed)
        if layer_sets:
            trained = train_fnet(preset.fnet, ds.train, reference, seed=args.seed, progress=False)
            for layers in layer_sets:
                fm = feature_memory.train(ds.train, trained.fnet, preset.fnet,
                                          FeatureMemoryConfig(layers=layers, coreset_fraction=0.01), seed=args.seed)
                _report(family, f"feature memory {'+'.join(layers)} ({preset.fnet.epochs} f-Net epochs)",
                        fm.score_maps(test.images).heatmap, test)
        if args.flaw_epochs > 0:
            cfg = preset.replace(fnet={"epochs": args.flaw_epochs, "synthetic_flaws": True, "bn_stats": "recompute"}).fnet
            trained = train_fnet(cfg, ds.train, reference, seed=args.seed, progress=False)
            maps = trained.flaw_head.pixel_maps(trained.fnet.variables, test.images)
            _report(family, f"flaw head ({args.flaw_epochs} epochs)", maps, test)
        print(f"{family}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        jax.clear_caches()
    return 0


if __name__ == "__main__":
    sys.exit(main())
