"""PyTorch weight files read without torch (an allow-list unpickler) and mapped onto
our Flax models: torchvision ResNets, GRepQ's low-level model, OpenAI CLIP RN50.
"""
