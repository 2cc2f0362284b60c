"""Losses (keras.ops only): pixel cross-entropy with ignore label / OHEM, CAR."""

from iseg.losses.cross_entropy import pixel_cross_entropy
from iseg.losses.car import CARLoss, CAROptions, car_losses, car_multi_rate_losses
