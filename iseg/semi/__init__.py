"""Semi-supervised training (docs/semi_supervised.md): one teacher-student engine with
pluggable pieces (strong augmentation, mixing, pseudo-labels, teachers) composed by the
methods in `iseg.semi.methods`.

The pieces are part of the training engine (like `iseg.datasets`): TensorFlow code, usable
inside `tf.function` and under `tf.distribute`. Images are float32 ``[B, H, W, 3]`` in
``[0, 255]`` (the method normalises before the forward pass); randomness is stateless
(each piece takes an ``int32 [2]`` seed).
"""
