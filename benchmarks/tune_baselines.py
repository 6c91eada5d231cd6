"""Tune the baselines' capacity and training length on the TUNING families only (data/synthetic.py),
so that every method in the quality table gets the same care as Ano-Unet.

    python benchmarks/tune_baselines.py [--preset small] [--families tuning] [--out runs/tune]

Autoencoder: width x latent x epochs. Feature memory: which f-Net maps (on the family's own f-Net,
trained once per family, the one Ano-Unet would use). Every configuration is scored like
`anounet evaluate` scores it (maps smoothed with the preset's sigma; pixel AUROC, AUPRO, image AUROC
of the map max). Prints one table per method with the mean over families, best first; the chosen
configuration goes into baselines/configs.py by hand, with the table in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time

import numpy as np

# Round 1 (tiles, benchmarks/results/tune_baselines_small_round1.jsonl): width 32 was no better than 16
# at 2.5x the time; a wider latent and longer training were far better (pixel AUROC 0.63 -> 0.79).
AE_GRID = {"width": [16], "latent": [256, 1024], "epochs": [40, 100]}
FM_LAYERS = [("stride4", "stride8"), ("stride8", "stride16"), ("stride4", "stride8", "stride16")]
DOC_EPOCHS = [12, 50, 100]  # the DOC decoder: f-Net feature -> image
GAN_EPOCHS = [10, 40]  # AnoGAN's DCGAN training (the latent search keeps its 500 steps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--families", default="tiles,grain,leather",
                    help="tuning | comma-separated TUNING family names (default: %(default)s)")
    ap.add_argument("--skip-fm", action="store_true", help="autoencoder only (no f-Net training)")
    ap.add_argument("--methods", default="autoencoder,feature-memory",
                    help="which to tune: autoencoder, feature-memory, doc-decoder, anogan")
    ap.add_argument("--ae-latent", default=None, help="comma-separated latents (default: the grid's)")
    ap.add_argument("--ae-epochs", default=None, help="comma-separated epoch counts (default: the grid's)")
    args = ap.parse_args(argv)
    from anounet_jax.engine.devices import enable_compilation_cache, split_cpu_into_devices

    split_cpu_into_devices()
    enable_compilation_cache()
    from anounet_jax.baselines import anogan, autoencoder, doc_decoder, feature_memory
    from anounet_jax.baselines.configs import baseline_config
    from anounet_jax.config import get_preset
    from anounet_jax.data.embedded import load_reference
    from anounet_jax.data.sources import load_labelled
    from anounet_jax.data.synthetic import TUNING
    from anounet_jax.fnet.train import train_fnet
    from anounet_jax.maps import smooth
    from anounet_jax.metrics import map_metrics

    preset = get_preset(args.preset)
    base = baseline_config(preset.name)
    families = TUNING if args.families == "tuning" else tuple(args.families.split(","))
    if set(families) - set(TUNING):
        raise SystemExit(f"tune only on TUNING families {TUNING}, not {sorted(set(families) - set(TUNING))}")
    grid = dict(AE_GRID)
    if args.ae_latent:
        grid["latent"] = [int(v) for v in args.ae_latent.split(",")]
    if args.ae_epochs:
        grid["epochs"] = [int(v) for v in args.ae_epochs.split(",")]
    rows = []

    def score(method, cfg_desc, family, res, seconds):
        maps = smooth(res.heatmap, preset.maps.smoothing_sigma)
        m = map_metrics(maps, maps.reshape(len(maps), -1).max(1), test.labels, test.masks)
        rows.append({"method": method, "config": cfg_desc, "family": family, "seconds": round(seconds, 1),
                     **{k: m[k] for k in ("pixel_auroc", "aupro", "image_auroc_map_max")}})
        print(json.dumps(rows[-1]), flush=True)

    for family in families:
        data = load_labelled(f"synthetic:{family}", preset)
        test = data.test
        todo = args.methods.split(",")
        for width, latent, epochs in (itertools.product(*grid.values()) if "autoencoder" in todo else ()):
            cfg = dataclasses.replace(base.autoencoder, width=width, latent=latent, epochs=epochs)
            t = time.perf_counter()
            res = autoencoder.train(data.train, cfg, seed=0).score_maps(test.images)
            score("autoencoder", f"width {width}, latent {latent}, {epochs} epochs", family, res,
                  time.perf_counter() - t)
        for epochs in (GAN_EPOCHS if "anogan" in todo else ()):
            cfg = dataclasses.replace(base.anogan, epochs=epochs)
            t = time.perf_counter()
            res = anogan.train(data.train, cfg, seed=0).score_maps(test.images, seed=0)
            score("anogan", f"{epochs} epochs", family, res, time.perf_counter() - t)
        if args.skip_fm or not {"feature-memory", "doc-decoder"} & set(todo):
            continue
        reference = load_reference(family, preset.image_size, preset.data.n_reference_per_class)
        trained = train_fnet(preset.fnet, data.train, reference, progress=False)
        for epochs in (DOC_EPOCHS if "doc-decoder" in todo else ()):
            cfg = dataclasses.replace(base.doc_decoder, epochs=epochs)
            t = time.perf_counter()
            res = doc_decoder.train(data.train, trained.fnet, cfg, seed=0).score_maps(test.images)
            score("doc-decoder", f"{epochs} epochs", family, res, time.perf_counter() - t)
        for layers in (FM_LAYERS if "feature-memory" in todo else ()):
            cfg = dataclasses.replace(base.feature_memory, layers=layers)
            t = time.perf_counter()
            res = feature_memory.train(data.train, trained.fnet, preset.fnet, cfg).score_maps(test.images)
            score("feature-memory", "+".join(layers), family, res, time.perf_counter() - t)

    for method in dict.fromkeys(r["method"] for r in rows):
        configs = dict.fromkeys(r["config"] for r in rows if r["method"] == method)
        table = []
        for c in configs:
            rs = [r for r in rows if r["method"] == method and r["config"] == c]
            mean = {k: float(np.mean([r[k] for r in rs if r[k] is not None]))
                    for k in ("pixel_auroc", "aupro", "image_auroc_map_max")}
            table.append((c, mean, {r["family"]: r["pixel_auroc"] for r in rs}, np.mean([r["seconds"] for r in rs])))
        table.sort(key=lambda t: -t[1]["pixel_auroc"])
        fams = list(table[0][2])
        print(f"\n{method} (preset {preset.name}, tuning families; pixel AUROC per family)\n")
        print("| config | mean pixel AUROC | mean AUPRO | mean image AUROC | " + " | ".join(fams) + " | s |")
        print("|---|---|---|---|" + "---|" * len(fams) + "---|")
        for c, mean, per, sec in table:
            print(f"| {c} | {mean['pixel_auroc']:.3f} | {mean['aupro']:.3f} | {mean['image_auroc_map_max']:.3f} | "
                  + " | ".join(f"{per[f]:.3f}" for f in fams) + f" | {sec:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
