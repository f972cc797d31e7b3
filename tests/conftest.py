"""Shared test set-up: one torch thread (tiny models; steady on a busy machine)."""

import torch

torch.set_num_threads(1)
