"""Distribution strategies: auto, one device, mirrored, multi-worker (TF_CONFIG), TPU."""

import json
import os

import tensorflow as tf
from absl import logging

from iseg.errors import ConfigError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
    """Split the host CPU into `num_devices` logical devices (before TF initialises)."""
    if num_devices and num_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


def create_strategy(name="auto", tpu=None):
    """A `tf.distribute.Strategy`.

    auto: MirroredStrategy over all visible GPUs when there are two or more, else the
    default (single device) strategy. mirrored: MirroredStrategy over all GPUs, or over all
    logical CPU devices when there is no GPU. multi_worker: MultiWorkerMirroredStrategy
    configured by the TF_CONFIG environment variable. tpu: TPUStrategy (`tpu` = name or
    address; None = the local TPU).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {name!r}. Valid strategies: {', '.join(STRATEGIES)}")
    if name == "multi_worker":  # must come before anything initialises the TF runtime
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment "
                              "variable (cluster and task)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name)
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)


def _tpu_strategy(tpu):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def per_replica_batch_size(global_batch_size, strategy):
    """The per-replica batch; an error names both numbers when they do not divide."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size <= 0 or global_batch_size % replicas:
        raise ConfigError(
            f"--batch_size={global_batch_size} (global) is not divisible by the "
            f"{replicas} replicas of the {type(strategy).__name__}")
    return global_batch_size // replicas


def task_info(strategy):
    """(task_type, task_id, is_chief) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not task_type:
        return None, 0, True
    cluster = resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                        and "chief" not in cluster)
    logging.info("task %s:%d (chief=%s)", task_type, task_id, is_chief)
    return task_type, task_id, is_chief
