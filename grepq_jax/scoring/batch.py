"""Scoring files into rows (CSV, and a JSON array) and quality maps, streaming.

Rows are written and flushed as images are done, so memory and a failure
late in a long run cost nothing already written.
"""
import csv
import io
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Iterator

import tqdm

from grepq_jax.formats import images, output_files
from grepq_jax.scoring import quality_map
from grepq_jax.scoring.api import Scorer, ScoreResult, as_pixels, describe, printable

def iter_image_paths(paths: Iterable[str], skips: images.WalkSkips | None = None
                     ) -> Iterator[pathlib.Path]:
    """Each path itself if not a folder (reading it reports a missing file),
    else the entries with image suffixes under it (`formats.images.walk_image_files`,
    lazily); what the walks pass over is counted in `skips`.
    """
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            yield from images.walk_image_files(path, skips)
        else:
            yield path


class _RowWriter:
    """CSV (and optionally a JSON array) written and flushed row by row.

    Each row is formatted whole first; a row its file's encoding cannot take
    is written with backslash escapes instead, so no row is ever lost.
    """

    def __init__(self, columns, csv_file, json_file):
        self.columns = columns
        self._csv_file, self._json_file, self._rows = csv_file, json_file, 0
        _write(csv_file, self._csv_line(dict(zip(columns, columns))))
        if json_file:
            _write(json_file, "[")

    def _csv_line(self, row: dict) -> str:
        text = io.StringIO()
        csv.DictWriter(text, self.columns, lineterminator="\n").writerow(row)
        return text.getvalue()

    def write(self, result: ScoreResult) -> None:
        row = {"path": describe(result.source), "error": result.error} | result.parts
        _write(self._csv_file, self._csv_line(
            {name: "" if row.get(name) is None else row[name] for name in self.columns}))
        if self._json_file:
            record = json.dumps({name: row.get(name) for name in self.columns})
            _write(self._json_file, ("," if self._rows else "") + "\n" + record)
        self._rows += 1

    def close(self) -> None:
        if self._json_file:
            _write(self._json_file, "\n]\n")


def _write(file, text: str) -> None:
    """Writes and flushes `text`; escaped to ASCII if the encoding refuses it."""
    try:
        file.write(text)
    except UnicodeEncodeError:
        file.write(text.encode("ascii", "backslashreplace").decode("ascii"))
    file.flush()


class MapWriter:
    """Writes `folder`/NAME.png, a quality map per image, NAME its file's stem
    made unique in the folder (NAME-2, ...); never overwrites a file."""

    def __init__(self, scorer: Scorer, folder):
        if scorer.model.low_level is None:
            raise ValueError("--maps needs a model with a low-level encoder; this one "
                             f"holds {scorer.model.parts}")
        self.scorer, self.folder = scorer, pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed = 0

    def _free_path(self, source) -> pathlib.Path:
        stem = pathlib.Path(os.fsdecode(source)).stem or "image"
        for number in range(1, 1 << 20):
            path = self.folder / (f"{stem}.png" if number == 1 else f"{stem}-{number}.png")
            if not path.exists():
                return path
        raise OSError(f"no free name for {stem}.png in {self.folder}")

    def write(self, result: ScoreResult) -> None:
        """The map of a scored image; a failure is reported on stderr and counted."""
        try:
            pixels = as_pixels(result.source, max_pixels=self.scorer.max_pixels)
            distance_map = self.scorer.model.quality_map(pixels)
            title = f"{describe(result.source)}: {result.score:.4f} ({self.scorer.mode})"
            with output_files.replacing_path(self._free_path(result.source)) as path:
                quality_map.write_map_png(path, pixels, distance_map, title)
        except (ValueError, OSError) as error:
            self.failed += 1
            print(f"no map for {describe(result.source)}: {printable(str(error))}",
                  file=sys.stderr)


def score_paths(scorer: Scorer, paths: list[str], csv_file, json_file=None, *,
                progress: bool = True, skips: images.WalkSkips | None = None,
                maps: MapWriter | None = None) -> tuple[int, int]:
    """Writes a row per image of `paths` (and its map, with `maps`);
    returns (scored, failed).

    What the folder walks pass over is counted in `skips`.
    """
    total = sum(1 for _ in iter_image_paths(paths))  # A cheap first walk, for the ETA.
    writer = _RowWriter(scorer.columns, csv_file, json_file)
    scored = failed = 0
    try:
        with tqdm.tqdm(total=total, unit="image", disable=not progress,
                       file=sys.stderr) as bar:
            for result in scorer.score_many(iter_image_paths(paths, skips)):
                writer.write(result)
                if maps is not None and result.error is None:
                    maps.write(result)
                scored += result.error is None
                failed += result.error is not None
                bar.update()
    finally:
        # The rows so far stay valid JSON for a caller's own file; the command
        # discards its unfinished files instead (output_files.replacing).
        writer.close()
    return scored, failed
