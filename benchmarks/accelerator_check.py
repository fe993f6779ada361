"""The accelerator figures in one prepared run: one command, one JSON, one table.

On a machine with one GPU or TPU (about 6 minutes; it stops starting parts
after --budget_s), from the repository root, with nothing installed but the
machine's own stack and the wheels carried in benchmarks/wheels:

    python3 benchmarks/accelerator_check.py --wheels=benchmarks/wheels --out=OUT_DIR

Without an accelerator it runs the same code at toy sizes on the CPU, a smoke
of about a minute whose figures say nothing about speed (CI runs it):

    python benchmarks/accelerator_check.py --smoke --out=OUT_DIR

`--dry_run` lists every row it would fill, with the sizes, and runs nothing.

The wheels: the package needs, beyond a stack of JAX, flax, optax,
orbax-checkpoint, tensorboard and PyTorch, the pure-Python ml-collections,
piq for the FSIM peer, and transformers 4.57 (the last line with the Flax
CLIP classes that the RN50 and scoring paths import) with the hub and
tokenizers versions it accepts. Filled once, on a machine with a registry:

    pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_17_x86_64 -d benchmarks/wheels \\
        ml-collections==1.1.0 piq==0.8.0 transformers==4.57.6 \\
        huggingface-hub==0.36.0 tokenizers==0.22.1

(16 MB). `--wheels=DIR` installs them offline (`pip install --no-index
--no-deps --target`) into a temporary folder put first on the import path,
so they win over the machine's own versions for this run only.

Rows (see ROWS): the low-level training step of `configs/low_level.py:paper`
(8 groups x 9 versions x 2 views at 224 px) alone on a device-resident
batch and fed by the real pipeline (`data.workers` tried at several values,
the best kept), float32 and bfloat16; the FSIM label pass on two synthetic
corpora of distinct photo sizes (512-px class, 300-1,600 px), with the
`bench_label_pass.py --profile` split; the RN50 high-level step at the
`:paper` batch (128, groups of 4); zero-shot scoring throughput at 512x384
(low level and RN50); and the original's PyTorch step and piq's FSIM on the
same device, with the ratios ours / peer. A part that cannot run (no torch,
no piq, time spent) is reported as skipped with the reason; a part that
fails is reported with its one-line error, and the others still run.
"""

import argparse
import atexit
import dataclasses
import datetime
import glob
import itertools
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    part: str
    what: str


ROWS = (
    Row("low_step_alone_float32", "low_step",
        "low-level step alone (batch on the device), float32: ms/step, images/s"),
    Row("low_step_fed_float32", "low_step",
        "low-level step fed by the pipeline, float32: ms/step, images/s, fed/alone, best workers"),
    Row("low_step_alone_bfloat16", "low_step",
        "low-level step alone, bfloat16: ms/step, images/s"),
    Row("low_step_fed_bfloat16", "low_step",
        "low-level step fed by the pipeline, bfloat16 (the float32 best workers): fed/alone"),
    Row("label_pass_512", "label_pass",
        "FSIM label pass, 512-px class corpus: groups/s, programs compiled"),
    Row("label_pass_300_1600", "label_pass",
        "FSIM label pass, sides 300-1,600 px: groups/s, programs compiled"),
    Row("label_pass_profile", "label_pass",
        "label pass split on the 300-1,600 corpus: host FFT, device, building versions (s/group, share)"),
    Row("rn50_step", "rn50_step",
        "high-level RN50 training step, :paper batch: ms/step, images/s"),
    Row("score_low_level", "scoring",
        "zero-shot low-level scoring at 512x384 (63 patches an image): images/s"),
    Row("score_rn50", "scoring",
        "zero-shot RN50 scoring at 512x384: images/s"),
    Row("peer_low_step", "peers",
        "the original's PyTorch low-level step on the same device: ms/step, ours/peer"),
    Row("peer_fsim", "peers",
        "piq.fsim, the original's labels, on the same device: groups/s, ours/peer"),
)
# In this order: the peers' ratios need the first two parts' figures.
PARTS = ("low_step", "label_pass", "peers", "rn50_step", "scoring")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of one run: the accelerator's or the CPU smoke's."""
    mode: str
    low_config: str  # configs/low_level.py variant
    low_groups: int
    fed_photos: int  # 512-px class corpus, also the label_pass_512 row
    fed_sides: tuple[int, int]
    warmup_steps: int
    timed_steps: int
    workers: tuple[int, ...]  # data.workers tried for the fed float32 step
    fed_seconds: float  # a fed run stops timing after this long
    large_photos: int
    large_sides: tuple[int, int]
    profile_groups: int
    rn50_arch: str  # "rn50" or "tiny"
    rn50_batch: int
    rn50_group_size: int
    rn50_size: int
    rn50_steps: int
    score_images: int
    score_size: tuple[int, int]  # (height, width)
    score_low_width: int
    score_runs: int
    peer_fsim_groups: int
    budget_s: float

    def describe(self) -> dict:
        return dataclasses.asdict(self)


ACCELERATOR = Plan(
    mode="accelerator", low_config="paper", low_groups=8, fed_photos=192,
    fed_sides=(384, 640), warmup_steps=4, timed_steps=40, workers=(0, 4, -1),
    fed_seconds=15,
    large_photos=48, large_sides=(300, 1600), profile_groups=8,
    rn50_arch="rn50", rn50_batch=128, rn50_group_size=4, rn50_size=224,
    rn50_steps=10, score_images=16, score_size=(384, 512), score_low_width=64,
    score_runs=3, peer_fsim_groups=4, budget_s=400)
SMOKE = Plan(
    mode="cpu_smoke", low_config="tiny", low_groups=2, fed_photos=6,
    fed_sides=(56, 64), warmup_steps=1, timed_steps=2, workers=(0,), fed_seconds=15,
    large_photos=3, large_sides=(64, 96), profile_groups=2,
    rn50_arch="tiny", rn50_batch=4, rn50_group_size=2, rn50_size=64,
    rn50_steps=2, score_images=2, score_size=(192, 256), score_low_width=4,
    score_runs=1, peer_fsim_groups=1, budget_s=600)


class Skipped(Exception):
    """A row that cannot run here; the message says why."""


# Results ----------------------------------------------------------------------


class Results:
    """Rows as they are filled, written to JSON and Markdown after each part,
    so a run cut short still leaves what it measured."""

    def __init__(self, out: pathlib.Path, plan: Plan, meta: dict):
        self.out, self.plan, self.meta = out, plan, meta
        self.rows = {row.id: {"row": row.id, "what": row.what, "status": "not run"}
                     for row in ROWS}

    def fill(self, row_id: str, **values):
        self.rows[row_id].update(status="ok", **values)

    def mark(self, part: str, status: str, reason: str):
        for row in ROWS:
            if row.part == part and self.rows[row.id]["status"] == "not run":
                self.rows[row.id].update(status=status, reason=reason)

    def write(self):
        stem = self.out / f"accelerator_check_{self.plan.mode}"
        document = {"meta": self.meta, "plan": self.plan.describe(),
                    "rows": list(self.rows.values())}
        stem.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(document))


def markdown(document: dict) -> str:
    meta = document["meta"]
    lines = [f"accelerator_check ({document['plan']['mode']}), {meta.get('date', '')}: "
             f"{meta.get('device', '?')}; jax {meta.get('jax', '?')}, "
             f"torch {meta.get('torch') or 'absent'}", "",
             "| row | status | figures |", "| --- | --- | --- |"]
    for row in document["rows"]:
        figures = ", ".join(f"{k} {_short(v)}" for k, v in row.items()
                            if k not in ("row", "what", "status", "reason"))
        status = row["status"] if "reason" not in row else f"{row['status']}: {row['reason']}"
        lines.append(f"| {row['row']} | {status} | {figures or row['what']} |")
    return "\n".join(lines) + "\n"


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


# Wheels -----------------------------------------------------------------------


def install_wheels(folder: str) -> list[str]:
    """Installs every wheel in `folder` offline into a temporary folder put
    first on the import path (this process and the pipeline's workers)."""
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    target = tempfile.mkdtemp(prefix="accelerator_check_wheels_")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--disable-pip-version-check", "--target", target, *wheels]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"--wheels={folder}: pip could not install them: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [target, str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return [os.path.basename(w) for w in wheels]


# Parts ------------------------------------------------------------------------


def timed_calls(call, count: int) -> float:
    """Seconds per call over `count` calls (each call waits for its result)."""
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


def step_figures(seconds: float, images: int) -> dict:
    return {"ms_per_step": 1000 * seconds, "images_per_s": images / seconds}


class Scratch:
    """The run's temporary folder and what several parts share."""

    def __init__(self, folder: str):
        self.folder = pathlib.Path(folder)
        self.ours_alone_f32 = None  # s/step
        self.label_rates = {}  # corpus -> our groups/s
        self.large_dataset = None


def low_level_config(plan: Plan, photos: str, workers: int, dtype: str):
    from configs import low_level as configs  # pylint: disable=import-outside-toplevel

    config = configs.get_config(plan.low_config)
    config.data.path = photos
    config.data.workers = workers
    config.model.dtype = dtype
    config.batch_size = plan.low_groups
    config.num_devices = 1
    return config


def write_photos(folder: pathlib.Path, count: int, sides: tuple[int, int]) -> str:
    from benchmarks import bench_label_pass  # pylint: disable=import-outside-toplevel

    folder.mkdir(parents=True)
    bench_label_pass.write_corpus(str(folder), count, *sides)
    return str(folder)


def label_pass(plan: Plan, photos: str, cache: pathlib.Path, workers: int):
    """(dataset, groups/s, programs compiled) of a whole label pass."""
    from grepq_jax.training.labels import fsim_bucketed  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.data import low_level_pipeline as data  # pylint: disable=import-outside-toplevel

    config = low_level_config(plan, photos, workers, "float32")
    before = fsim_bucketed.compiled_programs()
    started = time.perf_counter()
    dataset = data.create_low_level_dataset(config.data, seed=0, cache_dir=str(cache))
    seconds = time.perf_counter() - started
    programs = fsim_bucketed.compiled_programs() - before
    return dataset, dataset.num_groups / seconds, programs, seconds


def part_low_step(plan: Plan, results: Results, scratch: Scratch):
    import jax  # pylint: disable=import-outside-toplevel
    from benchmarks import bench_train_step  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.data import low_level_pipeline as data  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.data import stream  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.pathways import low_level  # pylint: disable=import-outside-toplevel

    photos = write_photos(scratch.folder / "photos_512", plan.fed_photos, plan.fed_sides)
    cache = scratch.folder / "cache_512"
    dataset, rate, programs, seconds = label_pass(plan, photos, cache, plan.workers[-1])
    scratch.label_rates["512"] = rate
    results.fill("label_pass_512", groups=dataset.num_groups, groups_per_s=rate,
                 seconds=seconds, programs_compiled=programs,
                 data_workers=plan.workers[-1], sides=list(plan.fed_sides))
    config = low_level_config(plan, photos, 0, "float32")
    side = config.data.fragment_grid * config.data.fragment_size
    images = plan.low_groups * bench_train_step.VERSIONS * bench_train_step.VIEWS

    def fed_seconds(jax_side, workers: int) -> tuple[float, int]:
        """s/step and steps timed, fed by `workers`. The warm-up drains the
        batches made ahead while the workers started (up to 2 per worker), so
        the timed steps run at the pipeline's steady rate; the versions' LRU
        starts empty and holds a fraction of the corpus, as on a large one."""
        fresh = data.create_low_level_dataset(  # matrices from the cache; empty LRU
            low_level_config(plan, photos, workers, "float32").data, seed=0,
            cache_dir=str(cache))
        warmup = max(plan.warmup_steps, 2 * stream.resolve_workers(workers) + 2)
        batches = fresh.iterate(0, warmup + plan.timed_steps, plan.low_groups,
                                prefetch=config.data.prefetch, workers=workers)
        try:
            jax_side.run(batch for _, batch in itertools.islice(batches, warmup))
            started = time.perf_counter()
            deadline = started + plan.fed_seconds
            timed = []  # a slow pipeline is timed over fewer steps, not for minutes

            def until_deadline():
                for _, batch in batches:
                    timed.append(1)
                    yield batch
                    if time.perf_counter() > deadline:
                        return
            jax_side.run(until_deadline())
            return (time.perf_counter() - started) / len(timed), len(timed)
        finally:
            batches.close()

    best_workers = None
    for dtype in ("float32", "bfloat16"):
        dtype_config = low_level_config(plan, photos, 0, dtype)
        model = low_level.make_model(dtype_config.model)
        variables = jax.jit(model.init, static_argnames="train")(
            jax.random.key(0), jax.numpy.zeros((1, side, side, 3)), train=False)
        jax_side = bench_train_step.JaxSide(
            bench_train_step.random_batch(plan.low_groups, side), variables,
            config=dtype_config, xla_defaults=False)
        for _ in range(plan.warmup_steps):
            jax_side.step()
        alone = jax_side.repeat_seconds(plan.timed_steps)
        if dtype == "float32":
            scratch.ours_alone_f32 = alone
        results.fill(f"low_step_alone_{dtype}", **step_figures(alone, images),
                     compile_s=jax_side.compile_seconds, steps=plan.timed_steps,
                     images_per_step=images, side_px=side)
        tried = {}
        for workers in (plan.workers if best_workers is None else (best_workers,)):
            tried[str(workers)] = fed_seconds(jax_side, workers)
        best = min(tried, key=lambda k: tried[k][0])
        best_workers = int(best)
        fed, steps = tried[best]
        results.fill(f"low_step_fed_{dtype}", **step_figures(fed, images),
                     fed_over_alone=fed / alone, goal="<= 1.2", data_workers=best_workers,
                     steps=steps,
                     ms_per_step_by_workers={k: 1000 * v[0] for k, v in tried.items()})


def part_label_pass(plan: Plan, results: Results, scratch: Scratch):
    from benchmarks import bench_label_pass  # pylint: disable=import-outside-toplevel

    photos = write_photos(scratch.folder / "photos_large", plan.large_photos,
                          plan.large_sides)
    dataset, rate, programs, seconds = label_pass(
        plan, photos, scratch.folder / "cache_large", plan.workers[-1])
    scratch.label_rates["300_1600"] = rate
    scratch.large_dataset = dataset
    results.fill("label_pass_300_1600", groups=dataset.num_groups, groups_per_s=rate,
                 seconds=seconds, programs_compiled=programs,
                 data_workers=plan.workers[-1], fft_threads=len(os.sched_getaffinity(0)),
                 sides=list(plan.large_sides))
    stages, groups = bench_label_pass.stage_seconds(
        photos, plan.profile_groups, str(scratch.folder / "cache_profile"))
    work = bench_label_pass.work_seconds(stages)
    pick = {"host_fft": "host FFT filtering", "device": "device program (per group)",
            "versions": "versions: make_versions_uint8"}
    figures = {name: stages.get(stage, 0.0) / groups for name, stage in pick.items()}
    results.fill("label_pass_profile", groups=groups, s_per_group=work / groups,
                 **{f"{k}_s": v for k, v in figures.items()},
                 **{f"{k}_share": v * groups / work for k, v in figures.items()},
                 device_over_host_fft=figures["device"] / max(figures["host_fft"], 1e-12))


def rn50_arch_and_variables(plan: Plan, position_embedding: str = "resize"):
    from grepq_jax.formats import high_level_export  # pylint: disable=import-outside-toplevel
    from grepq_jax.models import clip_rn50  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.stand_ins import tiny_clip_rn50  # pylint: disable=import-outside-toplevel

    if plan.rn50_arch == "rn50":  # OpenAI's RN50 image tower (38.3M parameters)
        arch = clip_rn50.ModifiedResNetArch(layers=(3, 4, 6, 3), width=64, heads=32,
                                            embed_dim=1024, image_size=224,
                                            position_embedding=position_embedding)
    else:
        arch = dataclasses.replace(tiny_clip_rn50.IMAGE_ARCH,
                                   position_embedding=position_embedding)
    shapes = high_level_export.variable_shapes(clip_rn50.ModifiedResNet(arch))
    return arch, tiny_clip_rn50.random_variables(shapes, seed=0)


def part_rn50_step(plan: Plan, results: Results, scratch: Scratch):
    from benchmarks import bench_rn50_train_step  # pylint: disable=import-outside-toplevel

    arch, variables = rn50_arch_and_variables(plan)
    inputs = bench_rn50_train_step.shared_inputs(plan.rn50_batch, arch.embed_dim,
                                                 plan.rn50_size)
    run, compile_seconds = bench_rn50_train_step.jax_step(
        arch, variables, inputs, plan.rn50_group_size)
    run()
    seconds = timed_calls(run, plan.rn50_steps)
    results.fill("rn50_step", **step_figures(seconds, plan.rn50_batch),
                 compile_s=compile_seconds, batch=plan.rn50_batch,
                 group_size=plan.rn50_group_size, side_px=plan.rn50_size,
                 steps=plan.rn50_steps, loss_read_back="every step")


def part_scoring(plan: Plan, results: Results, scratch: Scratch):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from benchmarks import bench_scoring  # pylint: disable=import-outside-toplevel
    from grepq_jax.scoring import packing  # pylint: disable=import-outside-toplevel
    from grepq_jax.scoring.api import create_scorer  # pylint: disable=import-outside-toplevel
    from grepq_jax.formats import high_level_export  # pylint: disable=import-outside-toplevel
    from grepq_jax.models import clip  # pylint: disable=import-outside-toplevel

    folder = scratch.folder / "scoring"
    model = dict(bench_scoring.LOW_LEVEL_MODEL, width=plan.score_low_width)
    bench_scoring.write_low_level_export(folder / "low", model_config=model)
    arch, variables = rn50_arch_and_variables(plan, position_embedding="none")
    prompts = np.random.default_rng(0).standard_normal((1, 2, arch.embed_dim))
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    high_level_export.write(
        str(folder / "high"), encoder="clip_rn50", arch=arch, variables=variables,
        prompt_embeddings=prompts.astype(np.float32), mean=clip.OPENAI_MEAN,
        std=clip.OPENAI_STD, prompts=(("a good photo.", "a bad photo."),),
        dtype="float32", step=0)
    packing.export_model(folder / "model", low_level=str(folder / "low"),
                        high_level=str(folder / "high"))
    images = bench_scoring.photographs(plan.score_images, *plan.score_size)
    def scores(scorer):
        results = list(scorer.score_many(images))
        errors = [r.error for r in results if r.error is not None]
        if errors:  # An error row is fast: it must not pass for a score.
            raise RuntimeError(f"{len(errors)} image(s) not scored: {errors[0]}")
        return [r.score for r in results]

    for row, mode in (("score_low_level", "zero_shot_low"), ("score_rn50", "zero_shot_high")):
        scorer = create_scorer(folder / "model", mode)
        seconds = bench_scoring.timed(lambda s=scorer: scores(s), plan.score_runs)
        results.fill(row, images_per_s=len(images) / seconds, images=len(images),
                     size=f"{plan.score_size[1]}x{plan.score_size[0]}",
                     runs=plan.score_runs)


def part_peers(plan: Plan, results: Results, scratch: Scratch):
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise Skipped("torch is not installed here") from None
    from benchmarks import bench_train_step  # pylint: disable=import-outside-toplevel
    from configs import low_level as configs  # pylint: disable=import-outside-toplevel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and plan.mode != SMOKE.mode:
        raise Skipped("torch sees no GPU here: a CPU peer says nothing of this accelerator")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    config = configs.get_config(plan.low_config)
    side = config.data.fragment_grid * config.data.fragment_size
    images = plan.low_groups * bench_train_step.VERSIONS * bench_train_step.VIEWS
    torch.manual_seed(0)
    peer = bench_train_step.TorchSide(bench_train_step.random_batch(plan.low_groups, side),
                                      channels_last=True, device=device)
    for _ in range(plan.warmup_steps):
        peer.step()
    sync()
    seconds = timed_calls(peer.step, plan.timed_steps)
    ours = scratch.ours_alone_f32
    results.fill("peer_low_step", **step_figures(seconds, images), torch_device=device,
                 torch_format="channels_last", model="full ResNet-18 (the original's)",
                 ours_over_peer=(seconds / ours) if ours else "no float32 row of ours",
                 basis="peer s/step over ours (alone, float32); > 1: ours faster")
    if scratch.large_dataset is None:
        raise Skipped("no label-pass corpus (its part did not run)")
    try:
        import piq  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        raise Skipped("piq is not installed here (carry its wheel)") from None
    from benchmarks import bench_label_pass  # pylint: disable=import-outside-toplevel

    dataset = scratch.large_dataset
    per_group = []
    for group in range(min(plan.peer_fsim_groups, dataset.num_groups)):
        versions = dataset.versions(group)
        elapsed, _ = bench_label_pass.peer_seconds(versions, 12, device)
        per_group.append(elapsed)
    peer_rate = 1 / statistics.median(per_group)
    ours = scratch.label_rates.get("300_1600")
    results.fill("peer_fsim", groups_per_s=peer_rate, groups=len(per_group),
                 torch_device=device, corpus="300_1600",
                 ours_over_peer=(ours / peer_rate) if ours else "no label pass of ours",
                 basis="our whole pass (versions, FSIM, cache, compiles) over piq's 36 "
                       "pairs of given versions, groups/s")


PART_FUNCTIONS = {"low_step": part_low_step, "label_pass": part_label_pass,
                  "rn50_step": part_rn50_step, "scoring": part_scoring,
                  "peers": part_peers}


# Running ----------------------------------------------------------------------


def environment(wheels: list[str]) -> dict:
    import jax  # pylint: disable=import-outside-toplevel

    device = jax.devices()[0]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(sys.argv), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": f"{jax.device_count()} x {device.device_kind}",
            "cpu_cores": len(os.sched_getaffinity(0)), "wheels": wheels}
    try:
        import torch  # pylint: disable=import-outside-toplevel
        meta["torch"] = torch.__version__
        meta["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        meta["torch"] = None
    return meta


def run(plan: Plan, parts: list[str], out: pathlib.Path, wheels: list[str]) -> Results:
    results = Results(out, plan, environment(wheels))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Scratch(folder)
        for part in PARTS:
            if part not in parts:
                results.mark(part, "skipped", "not asked for (--parts)")
                continue
            spent = time.perf_counter() - started
            if spent > plan.budget_s:
                results.mark(part, "skipped", f"time budget spent ({spent:.0f} s)")
                continue
            print(f"== {part} (at {spent:.0f} s)", flush=True)
            part_started = time.perf_counter()
            try:
                PART_FUNCTIONS[part](plan, results, scratch)
            except Skipped as reason:
                results.mark(part, "skipped", str(reason))
            except Exception as error:  # pylint: disable=broad-except
                traceback.print_exc()
                results.mark(part, "failed", f"{type(error).__name__}: {error}".splitlines()[0])
            results.meta[f"{part}_seconds"] = round(time.perf_counter() - part_started, 1)
            print(f"== {part}: {results.meta[f'{part}_seconds']} s", flush=True)
            results.write()
    results.meta["total_seconds"] = round(time.perf_counter() - started, 1)
    results.write()
    return results


def dry_run(plan: Plan):
    print(f"plan ({plan.mode}): " + json.dumps(plan.describe()))
    for row in ROWS:
        print(f"  {row.id:26s} [{row.part}] {row.what}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results",
                        help="folder for accelerator_check_MODE.json and .md (made if missing)")
    parser.add_argument("--wheels", default=None,
                        help="folder of wheels to install offline first")
    parser.add_argument("--smoke", action="store_true",
                        help="the CPU smoke at toy sizes, whatever the machine")
    parser.add_argument("--dry_run", action="store_true",
                        help="list the rows and sizes; run nothing")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="start no part after this many seconds (default: the plan's)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {','.join(unknown)}; choose from {','.join(PARTS)}")
    if args.wheels is not None and not os.path.isdir(args.wheels):
        parser.error(f"--wheels={args.wheels}: not a folder")
    if args.wheels is not None and not glob.glob(os.path.join(args.wheels, "*.whl")):
        parser.error(f"--wheels={args.wheels}: no .whl file there")
    return args, parts


def main(argv=None) -> int:
    args, parts = parse_args(argv)
    plan = SMOKE if args.smoke else ACCELERATOR
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    if args.dry_run:
        dry_run(plan)
        return 0
    wheels = install_wheels(args.wheels) if args.wheels else []
    # JAX takes half the accelerator's memory, leaving the rest to the peers' torch.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    sys.path.insert(0, str(ROOT))
    import jax  # pylint: disable=import-outside-toplevel

    if jax.default_backend() == "cpu" and plan.mode != SMOKE.mode:
        print("no accelerator here: running the CPU smoke instead", flush=True)
        plan = dataclasses.replace(SMOKE, budget_s=args.budget_s or SMOKE.budget_s)
    if plan.mode == SMOKE.mode:
        # The smoke checks that every row runs; its figures mean nothing, so
        # its compiles need not optimise (they take a third of the time).
        jax.config.update("jax_disable_most_optimizations", True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(plan, parts, out, wheels)
    print(markdown({"meta": results.meta, "plan": plan.describe(),
                    "rows": list(results.rows.values())}))
    failed = [r["row"] for r in results.rows.values() if r["status"] == "failed"]
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
