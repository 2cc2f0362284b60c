"""The one place that knows about replicas: a cross-replica SUM for per-replica statistics.

CAR's class centres are sums over the *global* batch (METHODS.md 2(c)). Under a TensorFlow
`tf.distribute` strategy each replica only sees its part of the batch, so the sums are
all-reduced inside the replica context. Every other case (no strategy, cross-replica
context, one replica, or the JAX / PyTorch backends, whose data-parallel arrays are already
global) is the identity. TensorFlow is imported lazily and only on the TensorFlow backend.
"""

import keras


def _replica_context():
    """The TF replica context when more than one replica shares the step; None otherwise
    (no strategy, cross-replica context, one replica, or the JAX / PyTorch backends)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # the TF branch only; pure-Keras code never imports TF

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def cross_replica_sum(x):
    """SUM of `x` over all replicas in sync (TF replica context); `x` itself otherwise.

    On TensorFlow the all-reduce is differentiable: the gradient of a replica's loss with
    respect to `x` is all-reduced back to every replica, so each replica's features get the
    gradient that flows through the global sums.
    """
    context = _replica_context()
    if context is None:
        return x
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, x)


def cross_replica_gather(x):
    """`x` of every replica in sync concatenated along axis 0 (replica order); `x` itself
    otherwise. For statistics over the global batch that a sum cannot give (a maximum)."""
    context = _replica_context()
    return x if context is None else context.all_gather(x, axis=0)


def num_replicas_in_sync():
    """Replicas sharing the global batch (TF strategy replica context); 1 otherwise.

    Keras' own losses divide a replica's loss by this number so that summing the replicas'
    gradients gives the gradient of the global-batch mean; `SegmentationModel.compute_loss`
    does the same, so `fit` and the iseg trainer are correct under any strategy.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 1
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def replica_loss(terms, trackers, extra_losses=()):
    """This replica's training loss: the sum of the loss `terms` (a dict; each is recorded,
    unscaled, in `trackers[name]`) and of `extra_losses` (e.g. a model's `losses`), divided
    by `num_replicas_in_sync()` as Keras' own losses are, so that the replicas' summed
    gradients are those of the global-batch loss."""
    from keras import ops

    for name, value in terms.items():
        trackers[name].update_state(value)
    total = ops.sum(ops.stack(list(terms.values())))
    for loss in extra_losses:
        total = total + ops.cast(ops.sum(loss), "float32")
    return total / num_replicas_in_sync()
