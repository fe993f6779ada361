"""What differs between the two GRepQ encoders, behind one small interface."""

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Pathway:
    """A trainable encoder: its data, model, loss and export.

    Attributes:
        dataset: has `iterate(start_step, num_steps, batch_size, *,
            process_index, process_count)` yielding `(step, {name: np.ndarray})`.
        num_examples: examples in one epoch (groups or images).
        images_per_example: images the encoder sees per example, for throughput.
        init_variables: `rng -> {"params": ..., "batch_stats": ...}`.
        objective: `(params, batch_stats, batch) -> (loss, (batch_stats,
            metrics))`, pure and jit-able.
        export: `(state, directory) -> None` writes the encoder export
            (`encoder_export.write`: params/ and encoder.json) that a
            model folder is packaged from.
    """

    dataset: Any
    num_examples: int
    images_per_example: int
    init_variables: Callable[..., Any]
    objective: Callable[..., Any]
    export: Callable[[Any, str], None]
