"""Tiny random models that stand in for real ones in tests and offline
smoke runs (the configs' "tiny-random" CLIP). Not quality models."""
