"""The input pipelines: images into batches by step, per process, in any number of
worker processes, in an order that depends only on (seed, step).
"""
