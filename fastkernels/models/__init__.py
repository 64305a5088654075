"""The paper's networks (3resnet, 3layer, 2layer) as stacked ensembles, and their training."""

from .nets import ARCHS, BLOCKS, TRAINABLE, StackedNet
from .train import train_sgd

__all__ = ["ARCHS", "BLOCKS", "TRAINABLE", "StackedNet", "train_sgd"]
