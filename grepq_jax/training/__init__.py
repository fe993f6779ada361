"""The side that trains encoders: the trainer (one TrainState, one train_step), the
pathways, input pipelines, labels (FSIM, distortions), losses, pseudo-labels,
sharding, multi-process jobs, progress. The use side never imports it.
"""
