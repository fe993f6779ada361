"""Runs a checkout of the original GRepQ's own train_llm.py on the CPU, beside
the restatement (original_llm_restated.py), on the same batches.

The checkout's files are imported from the folder given (nothing of them is
in this repository). The only change made to them is the device: while they
run, `.to("cuda")` on a module or tensor means the CPU (train_llm.py:39, 143,
147-148 hard-wire CUDA; `torch.cuda.empty_cache()` does nothing without CUDA).
Its configs.py's `exp_config` is used with the data root, epochs, batch size
and results folder set, and no test domain (the CLIVE test at the end,
train_llm.py:175-180, needs that dataset). The loss of each iteration is read
back from the TensorBoard log it writes itself (train_llm.py:162).

The restatement then runs with the same torch seed, batch size, 4 loader
workers and the original's 7 x 32 px views, so both draw the same weights,
batch order, fragment offsets and flips: their losses per step must agree.
The original computes its FSIM labels inside the loader for every item, so a
few steps are all this comparison affords on a CPU: one epoch of the first 2
groups, one group a step.
"""
import contextlib
import json
import pathlib
import shutil
import sys

import torch

import original_llm_restated
import predistorted_corpus

STEPS_TOLERANCE = 1e-4  # float32 sums in another order: well under a loss's 1e-2 moves


@contextlib.contextmanager
def cuda_means_cpu():
    """`.to("cuda")` / `.to(device="cuda")` go to the CPU while inside."""
    module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to

    def on_cpu(args, kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a
                     for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs = dict(kwargs, device="cpu")
        return args, kwargs

    def module_on_cpu(self, *args, **kwargs):
        args, kwargs = on_cpu(args, kwargs)
        return module_to(self, *args, **kwargs)

    def tensor_on_cpu(self, *args, **kwargs):
        args, kwargs = on_cpu(args, kwargs)
        return tensor_to(self, *args, **kwargs)

    torch.nn.Module.to, torch.Tensor.to = module_on_cpu, tensor_on_cpu
    try:
        yield
    finally:
        torch.nn.Module.to, torch.Tensor.to = module_to, tensor_to


def _logged_losses(logdir: pathlib.Path) -> list[float]:
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    return [e.value for e in sorted(events.Scalars("TrainLoss"), key=lambda e: e.step)]


def run_original(repo, data: pathlib.Path, results: pathlib.Path, *, epochs: int,
                 batch: int, seed: int) -> list[float]:
    """The checkout's TrainQCLLLM(...).learn() on `data` (ROOT/LIVE_FB_synthetic)."""
    sys.path.insert(0, str(pathlib.Path(repo).absolute()))
    try:
        with cuda_means_cpu():
            import configs  # pylint: disable=import-outside-toplevel
            import train_llm  # pylint: disable=import-outside-toplevel
            config = dict(configs.exp_config, database_path=str(data.parent), epochs=epochs,
                          batch_size_qacl=batch, results_dir=str(results))
            results.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed)
            trainer = train_llm.TrainQCLLLM(config, [data.name], test_domains=[])
            trainer.learn()
            trainer.logger.flush()
    finally:
        sys.path.remove(str(pathlib.Path(repo).absolute()))
    return _logged_losses(results / "Logs")


def first_groups(data: pathlib.Path, count: int, root: pathlib.Path) -> pathlib.Path:
    """ROOT/<data's name> holding copies of data's first `count` groups and
    an index of them (data_read_utils.py:29-37 reads the index)."""
    subset = root / data.name
    subset.mkdir(parents=True, exist_ok=True)
    folders = original_llm_restated.group_folders(data)[:count]
    for folder in folders:
        shutil.copytree(folder, subset / folder.name, dirs_exist_ok=True)
    (subset / predistorted_corpus.INDEX_FILE).write_text(
        "im_loc\n" + "".join(f"{f.name[:-len('.bmp')]}.png\n" for f in folders))
    return subset


def compare(repo, data: pathlib.Path, workdir: pathlib.Path, *, groups: int = 2,
            batch: int = 1, seed: int = 0, label_cache=None) -> dict:
    """Losses per step of one epoch of both on data's first `groups` groups."""
    subset = first_groups(data, groups, workdir / "data")
    steps = -(-groups // batch)
    original = run_original(repo, subset, workdir / "original", epochs=1, batch=batch,
                            seed=seed)
    labels = original_llm_restated.group_labels(subset, label_cache)
    restated = original_llm_restated.train(subset, labels, steps=steps, batch_size=batch,
                                           seed=seed)["loss"]
    return {"original": original, "restated": restated, "max_abs_difference":
            max(abs(a - b) for a, b in zip(original, restated))
            if len(original) == len(restated) else float("inf")}


def agreement(repo, data: pathlib.Path, workdir: pathlib.Path, **kwargs) -> dict:
    """`compare`, kept in WORKDIR/agreement.json and read back from there."""
    path = workdir / "agreement.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compare(repo, data, workdir, **kwargs)
    path.write_text(json.dumps(result))
    return result


def report(agreement: dict) -> str:
    lines = ["original train_llm.py vs restatement, loss per step (same seed and batches):"]
    lines += [f"  step {i + 1}: {a:.6f} vs {b:.6f}" for i, (a, b) in
              enumerate(zip(agreement["original"], agreement["restated"]))]
    verdict = ("agree" if agreement["max_abs_difference"] <= STEPS_TOLERANCE
               else "DIFFER")
    lines.append(f"  max |difference| {agreement['max_abs_difference']:.2e}: {verdict} "
                 f"(tolerance {STEPS_TOLERANCE})")
    return "\n".join(lines)
