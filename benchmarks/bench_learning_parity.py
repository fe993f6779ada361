"""Learning parity: a low-level training run of ours beside the original GRepQ's.

Both sides train on the same files for the same budget, are judged by the
same code, and are compared per seed:

- Data: the embedded corpus's 8 photographs (and --photos=DIR's, when given),
  their longer side shrunk to --max_side px (area filter), each distorted
  once into the 8 "livefb" versions and written in the original's
  pre-distorted layout (predistorted_corpus.py). Both sides read those files.
- Ours: `python -m grepq_jax.main --config=configs/low_level.py:paper` with
  `--config.data.layout=predistorted` and the shared budget below.
- The original: its low-level training restated in PyTorch from its files
  (original_llm_restated.py cites them), its FSIM labels computed once for
  every seed (the original recomputes them per item: same values). With
  --original_repo=DIR, original_repo_shim.py first runs that checkout's own
  train_llm.py on the CPU for a few steps beside the restatement, on the same
  batches, and prints both losses per step.
- Shared budget: --steps optimiser steps of --batch groups x 9 versions x 2
  views, views of a --grid x --grid mosaic of 32 px fragments (the original:
  7 x 32 = 224 px; 4 x 32 = 128 px here, about a third of the cost, to fit 2
  cores), learning rate 1e-4 with cosine decay to 1e-6, AdamW weight decay
  0.05, seeds 0..--seeds-1 (ours: config.seed; the original: torch.manual_seed).
- Judge: the original's latest.tar through `python -m grepq_jax.convert
  --grepq_low_level`, ours through `python -m grepq_jax.export`, both with
  --pristine=the training photographs as trained on (one folder); then
  bench_quality.py's held-out photographs (--images of them, at 256 px) and
  families, the Spearman of the zero-shot score against the level, averaged
  per family, over the 8 unseen families, the 4 training families and all.
- Pristine sensitivity: the same encoders' orderings with pristine statistics
  from the training photographs at full size and, with --other_pristine=DIR,
  from other clean photographs at 256 and 512 px (heldout_judge.py).

Outputs in --out: results.json ({"ours": {"heldout_mean": [per seed],
"unseen_mean", "training_mean", "per_family", "loss": [per seed, per step],
"seconds": [per seed], "pristine": {...}}, "original": {...}, "settings"}),
loss_curves.png, table.md (printed too), and the runs, model folders and
written data.

One command, offline, from the repository root:

    python benchmarks/bench_learning_parity.py --out=parity_out \
        --other_pristine=OTHER_PHOTOS --original_repo=GREPQ_CHECKOUT

OTHER_PHOTOS: a folder of clean photographs (docs/quality.md lists the
Debian wallpapers used). --original_repo imports the checkout's own files,
so it needs their imports too (pandas, h5py, tensorboard, clip).

Default: 3 seeds x 60 steps of 4 groups on each side: 23 min 43 s from
scratch on the 2-core development machine (load average about 2): piq's
labels 89 s once, 147 to 160 s per training run on either side, about a
minute judging each model; under load 5 to 7, about 80 minutes, with the
same figures. Everything finished is kept in --out and read back by a rerun.
--quick: 1 seed x 8 steps on 4 photographs, 2 held-out images, 3 families;
2 min 55 s from scratch (load average 2 to 3), the same figures as an
earlier quick run.
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import bench_quality  # noqa: E402
from bench_quality import run_package_command  # noqa: E402
import heldout_judge  # noqa: E402
import predistorted_corpus  # noqa: E402

SIDES = ("ours", "original")
LOSS_STEPS = (10, 30, 60)
FRAGMENT = 32  # the original's fragment side, px (dataloader_contrastive.py:90)
LABEL_CACHE = "original_fsim_labels.npz"  # in --out: piq's labels, by group content


def _losses_logged(logdir: pathlib.Path) -> list[float]:
    """The per-step `loss` scalars the trainer logs (TensorBoard files)."""
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    return [e.value for e in sorted(events.Scalars("loss"), key=lambda e: e.step)]


def train_ours(data: pathlib.Path, workdir: pathlib.Path, seed: int, args,
               epochs: int) -> dict:
    """Our trainer on the pre-distorted files; {"loss", "seconds", "trained"}.
    A finished run in `workdir` (from an interrupted benchmark) is read back."""
    done = workdir / "seconds.json"
    if done.is_file():
        return {"loss": _losses_logged(workdir / "tensorboard"),
                "seconds": json.loads(done.read_text()), "trained": workdir / "export"}
    seconds = run_package_command([sys.executable, "-m", "grepq_jax.main",
                    "--config=configs/low_level.py:paper", f"--workdir={workdir}",
                    "--config.data.layout=predistorted", f"--config.data.path={data}",
                    "--config.data.workers=0", f"--config.data.fragment_grid={args.grid}",
                    f"--config.data.fragment_size={FRAGMENT}", f"--config.seed={seed}",
                    f"--config.batch_size={args.batch}", f"--config.num_epochs={epochs}",
                    "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000"],
                   f"our training (seed {seed})")
    done.write_text(json.dumps(seconds))
    return {"loss": _losses_logged(workdir / "tensorboard"), "seconds": seconds,
            "trained": workdir / "export"}


def train_original(data: pathlib.Path, labels: pathlib.Path, workdir: pathlib.Path,
                   seed: int, args, steps: int) -> dict:
    """The restated original, in a process of its own; {"loss", "seconds", "trained"}."""
    checkpoint, result = workdir / "Train" / "latest.tar", workdir / "result.json"
    if result.is_file():  # finished by an interrupted benchmark
        return dict(json.loads(result.read_text()), trained=checkpoint)
    seconds = run_package_command([
                    sys.executable, str(ROOT / "benchmarks" / "original_llm_restated.py"),
                    f"--data={data}", f"--labels={labels}", f"--checkpoint={checkpoint}",
                    f"--result={result}", f"--steps={steps}", f"--batch={args.batch}",
                    f"--seed={seed}", f"--grid={args.grid}", f"--size={FRAGMENT}"],
                   f"the original's training (seed {seed})")
    run = dict(json.loads(result.read_text()), seconds=seconds)
    result.write_text(json.dumps(run))
    return dict(run, trained=checkpoint)


def label_difference(our_workdir: pathlib.Path, piq_labels) -> float:
    """Max |our FSIM labels (the trainer's cache) - piq's| over every group."""
    (cache,) = (our_workdir / "fsim_cache").glob("fsim_labels_*.npz")
    with np.load(cache) as stored:  # keys "index|files", the index in sorted order
        order = np.argsort([int(key.split("|")[0]) for key in stored["keys"]])
        ours = stored["matrices"][order]
    return float(np.abs(ours - np.stack([m.numpy() for m in piq_labels])).max())


def model_folder(side: str, trained: pathlib.Path, pristine_dir: pathlib.Path,
                 out: pathlib.Path) -> pathlib.Path:
    """The scoring model folder, through `grepq export` or `grepq convert`."""
    if not (out / "model.json").is_file():
        if side == "ours":
            command = ["-m", "grepq_jax.export", f"--low_level={trained}"]
        else:
            command = ["-m", "grepq_jax.convert", f"--grepq_low_level={trained}"]
        run_package_command([sys.executable, *command, f"--pristine={pristine_dir}",
                             f"--out={out}"], f"packaging {trained}")
    return out


def pristine_sets(out: pathlib.Path, args) -> dict:
    """Label -> list of (H, W, 3) float images, for the sensitivity columns."""
    from grepq_jax.scoring import packing
    sets = {"training photos, full size": list(packing.pristine_images(None, []))}
    if args.other_pristine:
        for side in (256, 512):
            folder = predistorted_corpus.write_pristine_folder(
                out / f"other_pristine_{side}",
                predistorted_corpus.folder_sources(args.other_pristine, side))
            sets[f"other photos, {side} px"] = list(packing.pristine_images(str(folder), []))
    return sets


def _cached_gaussians(path: pathlib.Path, encoder, versions: dict) -> dict:
    """heldout_judge.version_gaussians, kept in `path` for a rerun on the same
    held-out set (an interrupted benchmark, or one with more flags)."""
    keys = sorted(versions)
    if path.is_file():
        with np.load(path) as stored:
            if stored["keys"].tolist() == ["|".join(k) for k in keys]:
                return {key: list(zip(stored["mu"][i], stored["cov"][i]))
                        for i, key in enumerate(keys)}
    gaussians = heldout_judge.version_gaussians(encoder, versions)
    np.savez(path, keys=np.array(["|".join(k) for k in keys]),
             mu=np.array([[mu for mu, _ in gaussians[k]] for k in keys]),
             cov=np.array([[cov for _, cov in gaussians[k]] for k in keys]))
    return gaussians


def judge(folders: dict, versions: dict, extra_sets: dict) -> dict:
    """{side: [per seed summary with "pristine": {set: summary}]}."""
    results = {side: [] for side in SIDES}
    checked = False
    for (side, seed), folder in sorted(folders.items(), key=lambda kv: kv[0][1]):
        encoder, stats = heldout_judge.load_folder(folder)
        if not checked:  # The split score equals the model folder's scorer.
            first = next(iter(versions.values()))[3]
            gap = heldout_judge.check_against_scorer(folder, encoder, stats, first)
            if gap > 1e-6:
                sys.exit(f"the judge's score differs from the scorer's by {gap}")
            checked = True
        gaussians = _cached_gaussians(folder.parent / f"{folder.name}_heldout.npz",
                                      encoder, versions)
        result = heldout_judge.summary(heldout_judge.orderings(gaussians, stats))
        result["pristine_patches"] = stats.num_patches
        result["pristine"] = {}
        for label, images in extra_sets.items():
            other = heldout_judge.statistics_of(images, encoder)
            result["pristine"][label] = dict(
                heldout_judge.summary(heldout_judge.orderings(gaussians, other)),
                patches=other.num_patches)
        results[side].append(result)
        print(f"judged {side} seed {seed}: held-out {result['heldout_mean']:.3f}", flush=True)
    return results


# Report ------------------------------------------------------------------------------

def _loss_at(losses: list[float], step: int) -> str:
    return f"{losses[step - 1]:.3f}" if len(losses) >= step else "-"


def _spread(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.3f} ± {values.std():.3f} ({values.min():.3f}..{values.max():.3f})"


def table(results: dict) -> str:
    per_seed = ["| side | seed | held-out (all) | unseen | training families | "
                + " | ".join(f"loss@{s}" for s in LOSS_STEPS) + " | seconds |",
                "|" + "---|" * (6 + len(LOSS_STEPS))]
    for side in SIDES:
        for seed, run in enumerate(results[side]["runs"]):
            per_seed.append(
                f"| {side} | {seed} | {run['heldout_mean']:.3f} | {run['unseen_mean']:.3f} | "
                f"{run['training_mean']:.3f} | "
                + " | ".join(_loss_at(run["loss"], s) for s in LOSS_STEPS)
                + f" | {run['seconds']:.0f} |")
    spread = ["| side | held-out (all) | unseen | training families |", "|---|---|---|---|"]
    for side in SIDES:
        runs = results[side]["runs"]
        spread.append(f"| {side} | " + " | ".join(
            _spread([r[key] for r in runs])
            for key in ("heldout_mean", "unseen_mean", "training_mean")) + " |")
    families = list(results[SIDES[0]]["runs"][0]["per_family"])
    family = ["| family | " + " | ".join(SIDES) + " |", "|---|" + "---|" * len(SIDES)]
    for name in families:
        family.append(f"| {name} | " + " | ".join(
            _spread([r["per_family"][name] for r in results[side]["runs"]])
            for side in SIDES) + " |")
    sets = ["as trained on, 256 px"] + list(results[SIDES[0]]["runs"][0]["pristine"])
    sensitivity = ["| pristine set (patches) | " + " | ".join(SIDES) + " |",
                   "|---|" + "---|" * len(SIDES)]
    for label in sets:
        cells = []
        for side in SIDES:
            runs = results[side]["runs"]
            picked = runs if label == sets[0] else [r["pristine"][label] for r in runs]
            cells.append(_spread([r["heldout_mean"] for r in picked]))
        patches = (results[SIDES[0]]["runs"][0]["pristine_patches"] if label == sets[0]
                   else results[SIDES[0]]["runs"][0]["pristine"][label]["patches"])
        sensitivity.append(f"| {label} ({patches}) | " + " | ".join(cells) + " |")
    return "\n\n".join([
        "Per seed (Spearman of the zero-shot score against -level, mean over "
        "(image, family) pairs; loss per step; wall seconds of the training run):",
        "\n".join(per_seed), "Over seeds (mean ± sd (min..max)):", "\n".join(spread),
        "Per family, over seeds:", "\n".join(family),
        "Held-out mean (all families) by pristine statistics:", "\n".join(sensitivity)])


def plot_losses(results: dict, path: pathlib.Path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    figure, axis = pyplot.subplots(figsize=(6, 3.6))
    for side, colour in zip(SIDES, ("tab:blue", "tab:orange")):
        for seed, run in enumerate(results[side]["runs"]):
            axis.plot(range(1, len(run["loss"]) + 1), run["loss"], color=colour,
                      linewidth=0.9, alpha=0.8, label=side if seed == 0 else None)
    axis.set_xlabel("step")
    axis.set_ylabel("quality-aware contrastive loss")
    axis.set_title("Low-level training loss, same data and budget (one line a seed)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="learning_parity_out",
                        help="Folder for data, runs, model folders and results.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4, help="Groups per step.")
    parser.add_argument("--grid", type=int, default=4, help="Fragments per view side.")
    parser.add_argument("--max_side", type=int, default=256,
                        help="Training photographs' longer side, px.")
    parser.add_argument("--images", type=int, default=len(bench_quality.HELD_OUT),
                        help="Held-out photographs (first N of bench_quality's).")
    parser.add_argument("--photos", default=None,
                        help="A second folder of pristine photographs to train on too.")
    parser.add_argument("--other_pristine", default=None,
                        help="Other clean photographs for the pristine sensitivity.")
    parser.add_argument("--original_repo", default=None,
                        help="A checkout of suhas-srinath/GRepQ: also run its own "
                             "train_llm.py beside the restatement (a few steps).")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 8 steps, 4 photographs, 2 images, 3 families.")
    args = parser.parse_args()
    for flag in ("photos", "other_pristine", "original_repo"):
        value = getattr(args, flag)
        if value and not pathlib.Path(value).is_dir():
            parser.error(f"--{flag}={value}: not a folder")
    if args.original_repo and not (pathlib.Path(args.original_repo) / "train_llm.py").is_file():
        parser.error(f"--original_repo={args.original_repo}: no train_llm.py there "
                     "(a checkout of suhas-srinath/GRepQ)")
    if args.quick:
        args.seeds, args.steps, args.images = 1, 8, 2
    families = (("jpeg2000", "motion_blur", "jpeg") if args.quick
                else tuple({**bench_quality.UNSEEN, **bench_quality.TRAINING}))
    out = pathlib.Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "compile_cache"))

    sources = predistorted_corpus.embedded_sources(args.max_side)
    if args.quick:
        sources = dict(list(sources.items())[:4])
    if args.photos:
        sources.update(predistorted_corpus.folder_sources(args.photos, args.max_side))
    data = predistorted_corpus.write_predistorted(out / "data", sources)
    pristine_dir = predistorted_corpus.write_pristine_folder(out / "pristine", sources)
    per_epoch = -(-len(sources) // args.batch)
    epochs = max(1, round(args.steps / per_epoch))
    steps = epochs * per_epoch

    import original_llm_restated  # pylint: disable=import-outside-toplevel
    start = time.perf_counter()
    piq_labels = original_llm_restated.group_labels(data, out / LABEL_CACHE)
    label_seconds = time.perf_counter() - start
    print(f"original's FSIM labels (piq, once for all seeds and kept in --out): "
          f"{label_seconds:.0f} s",
          flush=True)
    agreement = None
    if args.original_repo:
        import original_repo_shim  # pylint: disable=import-outside-toplevel
        try:
            agreement = original_repo_shim.agreement(args.original_repo, data, out / "shim",
                                                     label_cache=out / LABEL_CACHE)
        except ImportError as error:
            sys.exit(f"--original_repo={args.original_repo}: importing its train_llm.py "
                     f"failed ({error}); it needs its own requirements (pandas, h5py, "
                     "tensorboard, clip)")
        print(original_repo_shim.report(agreement), flush=True)

    runs = {side: [] for side in SIDES}
    folders = {}
    for seed in range(args.seeds):
        for side in SIDES:
            workdir = out / "runs" / f"{side}_seed{seed}"
            if side == "ours":
                run = train_ours(data, workdir, seed, args, epochs)
            else:
                run = train_original(data, out / LABEL_CACHE, workdir, seed, args, steps)
            print(f"{side} seed {seed}: {steps} steps in {run['seconds']:.0f} s, loss "
                  f"{run['loss'][0]:.3f} -> {run['loss'][-1]:.3f}", flush=True)
            runs[side].append(run)
            folders[side, seed] = model_folder(side, run["trained"], pristine_dir,
                                               out / "models" / f"{side}_seed{seed}")

    label_gap = label_difference(out / "runs" / "ours_seed0", piq_labels)
    print(f"FSIM labels, ours vs piq's: max |difference| {label_gap:.2e}", flush=True)
    versions = heldout_judge.heldout_versions(args.images, families, 256)
    judged = judge(folders, versions, pristine_sets(out, args))
    results = {side: {"runs": [dict(j, loss=r["loss"], seconds=r["seconds"])
                               for j, r in zip(judged[side], runs[side])]}
               for side in SIDES}
    report = table(results)
    (out / "table.md").write_text(report + "\n")
    plot_losses(results, out / "loss_curves.png")
    summary = {side: {
        "heldout_mean": [r["heldout_mean"] for r in results[side]["runs"]],
        "unseen_mean": [r["unseen_mean"] for r in results[side]["runs"]],
        "training_mean": [r["training_mean"] for r in results[side]["runs"]],
        "per_family": {f: [r["per_family"][f] for r in results[side]["runs"]]
                       for f in results[side]["runs"][0]["per_family"]},
        "loss": [r["loss"] for r in results[side]["runs"]],
        "seconds": [r["seconds"] for r in results[side]["runs"]],
        "pristine": {label: [r["pristine"][label]["heldout_mean"]
                             for r in results[side]["runs"]]
                     for label in results[side]["runs"][0]["pristine"]},
        "pristine_patches": results[side]["runs"][0]["pristine_patches"],
    } for side in SIDES}
    summary["original"]["label_seconds"] = label_seconds
    summary["original_repo_agreement"] = agreement
    summary["fsim_label_max_difference"] = label_gap
    summary["settings"] = {
        "seeds": args.seeds, "steps": steps, "groups_per_step": args.batch,
        "versions_per_group": 9, "view_px": args.grid * FRAGMENT, "learning_rate": 1e-4,
        "training_photos": len(sources), "max_side": args.max_side,
        "heldout_images": args.images, "families": list(families)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print("\n" + report)
    print(f"\nwrote {out}/results.json, table.md, loss_curves.png")


if __name__ == "__main__":
    main()
