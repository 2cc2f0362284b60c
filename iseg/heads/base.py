"""The head contract shared by every segmentation head.

A head is a Keras layer called on the backbone's endpoint dict
(`{"stem", "c2", "c3", "c4", "c5"}`) that returns a dict:

- `"logits"`: `[N, h, w, num_classes]` at the head's own resolution (the model upsamples);
- `"feature"`: the tensor CAR reads. With CAR (`car=` options, see
  `iseg.losses.car.CAROptions`) this is the CAR block's linear projection `z`, and the CAR
  block's end conv replaces the head's own second-to-last conv ("end conv"); without CAR
  it is the input of the end conv;
- `"classifier_input"`: the tensor fed to dropout -> classifier (what SAR reads).

Subclasses build their body in `__init__`, pass their own end conv to `_init_end`, and
finish `call` with `return self._classify(x, training)`.
"""

import keras

from iseg.layers.car import CARBlock
from iseg.losses.car import CAROptions


class Head(keras.layers.Layer):
    #: Default CAR settings per head (METHODS.md 2(b) table); subclasses override.
    car_filters = 512
    car_pooling_rates = (1,)
    #: zoo names `<head>_<backbone>` turn CAR on for heads designed around it (CARD).
    car_by_default = False

    def __init__(
        self,
        num_classes,
        dropout=0.1,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        kernel_initializer="he_normal",
        car=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dropout_rate = dropout
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.kernel_initializer = kernel_initializer
        car = CAROptions.create(car)
        self.car_options = None if car is None else car.for_head(self)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, use_bias=True, dtype=self.dtype_policy, name="classifier"
        )

    @property
    def norm_kwargs(self):
        """BN settings and conv kernel initializer forwarded to every ConvBNAct-based layer
        of the head (the CAR block's end conv included)."""
        return dict(
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            kernel_initializer=self.kernel_initializer,
        )

    @property
    def use_car(self):
        return self.car_options is not None

    def car_block(self, name="car"):
        """A CAR block with this head's CAR options and BN settings."""
        return CARBlock(
            self.car_options.filters,
            apply_end_conv=self.car_options.apply_end_conv,
            dtype=self.dtype_policy,
            name=name,
            **self.norm_kwargs,
        )

    def _init_end(self, end_conv):
        """Register the head's own end conv; CAR's block replaces it when `use_car`."""
        if self.use_car:
            self.car = self.car_block()
            self.end_conv = None
        else:
            self.car = None
            self.end_conv = end_conv

    def build(self, input_shape):
        # Heads are called on an endpoint dict: build by running `call` symbolically (a
        # reloaded model passes the recorded shapes back here as lists).
        specs = {k: keras.KerasTensor(tuple(v)) for k, v in dict(input_shape).items()}
        self.compute_output_spec(specs, training=True)
        self.built = True

    def _classify(self, x, training=None):
        if self.car is not None:
            x, feature = self.car(x, training=training)
        else:
            feature = x
            if self.end_conv is not None:
                x = self.end_conv(x, training=training)
        classifier_input = x
        x = self.dropout(x, training=training)
        return {
            "logits": self.classifier(x),
            "feature": feature,
            "classifier_input": classifier_input,
        }

    def endpoint_keys(self):
        """The endpoints `call` reads, in a fixed order without repeats: the declared
        `in_keys`, then `region_key`, `in_key`, `low_level_key` where the head has them.
        Heads that read endpoints conditionally override this. A feature perturbation or
        a neck (`SegmentationModel(neck=...)`) acts on exactly these."""
        keys = list(getattr(self, "in_keys", ()))
        keys += [getattr(self, n, None) for n in ("region_key", "in_key", "low_level_key")]
        keys = list(dict.fromkeys(k for k in keys if k is not None))
        if not keys:
            raise ValueError(
                f"{type(self).__name__} does not declare the endpoints it reads: give it "
                "`in_key` / `in_keys` or override `endpoint_keys()`"
            )
        return keys

    def sar_classifier(self):
        """(kernel [D, K], bias [K]) of the classifier SAR's anchors go through."""
        return self.classifier.kernel[0, 0], self.classifier.bias

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            dropout=self.dropout_rate,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            kernel_initializer=self.kernel_initializer,
            car=None if self.car_options is None else self.car_options.to_dict(),
        )
        return config
