"""TensorFlow kernels that pure-Keras layers call on the TensorFlow backend only, where
they compute the same as the layer's Keras code in fewer, faster ops, and which CPU
kernels TensorFlow runs (the layers choose their computation by it). Like
`iseg.distribute`, it imports TensorFlow lazily: the layers stay `keras.ops`-only and never
reach here on JAX or PyTorch."""

import functools


@functools.cache
def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels (`TF_ENABLE_ONEDNN_OPTS`, by default
    on Linux CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX); False where TensorFlow
    cannot say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(getattr(_pywrap_util_port, "IsMklEnabled", lambda: False)())


def fused_batch_norm_training(x, gamma, beta, epsilon):
    """(y, mean, variance) of a training-mode batch norm of a float32 NHWC `x` by
    TensorFlow's `FusedBatchNormV3` (one op forward, one backward): `y` normalised with the
    batch statistics, `variance` the biased batch variance, as Keras's layer uses it."""
    import tensorflow as tf

    empty = tf.zeros([0], x.dtype)
    y, mean, variance = tf.raw_ops.FusedBatchNormV3(  # raw op: epsilon is not clamped
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
        data_format="NHWC", is_training=True)[:3]
    # The kernel returns the unbiased batch variance (n / (n - 1), or 1 when n == 1).
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
    return y, mean, variance * (tf.maximum(n - 1.0, 1.0) / n)


def same_conv(x, kernel):
    """`tf.nn.conv2d(x, kernel, 1, "SAME")` for an NHWC `x` and an odd-sized
    `[kh, kw, cin, cout]` kernel, whose input gradient is a forward conv of the output
    gradient with the kernel flipped and its channels swapped (with stride 1 and 'same'
    padding of an odd kernel the two are equal, up to float32 summation order): without
    oneDNN, TensorFlow's forward conv kernel runs 1.2-1.7x faster than its
    `Conv2DBackpropInput` (docs/benchmarks.md). The kernel gradient is TensorFlow's own."""
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), (0, 1, 3, 2))
            dk = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                strides=[1, 1, 1, 1], padding="SAME")
            return tf.nn.conv2d(dy, flipped, 1, "SAME"), dk

        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

    return conv(tf.convert_to_tensor(x), tf.convert_to_tensor(kernel))
