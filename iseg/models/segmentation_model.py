"""`SegmentationModel`: backbone + head (+ aux head) + training-only regularizers.

The model owns its loss (`compute_loss`), so `model.compile(optimizer=...)` and `fit` are
all a user needs. At inference `model(images)` returns float32 logits `[N, H, W, K]` at the
input size; under `training=True` it returns a dict with the logits, the aux logits and the
head's hook feature, which `compute_loss` turns into the separate loss terms (each tracked as
a metric: `ce`, `high_level` (HFGD), `aux`, `car_intra`, `car_inter_c2c`, `car_inter_c2p`,
`sar_anchor`, `sar_pull`, `sar_ready` (0/1, logged only), `l2`).
"""

import keras
from keras import ops

from iseg.distribute import replica_loss
from iseg.losses.car import CARLoss, CAROptions
from iseg.losses.cross_entropy import pixel_cross_entropy
from iseg.losses.sar import SARRegularizer, check_sar_options
from iseg.ops import resize, spatial_shape

@keras.saving.register_keras_serializable(package="iseg")
class SegmentationModel(keras.Model):
    """Semantic segmentation model.

    Args:
      backbone: a registered backbone name (see `iseg.backbones.BACKBONES`) or a Keras model
        mapping images to an endpoint dict `{"stem", "c2", "c3", "c4", "c5"}`.
      head: a registered head name (see `iseg.heads.HEADS`) or a `Head` instance.
      num_classes: number of classes K.
      backbone_options / head_options: keyword options of the named builders. The saved
        config holds the backbone's effective options (`build_backbone`'s `build_options`:
        the user's options merged with the layout a weight file fixes), so a reloaded model
        is the trained network without the weight file.
      backbone_weights: None, "imagenet" or a weight file for the backbone (only used at
        construction; a reloaded model gets its weights from the saved file).
      aux_weight: weight of the auxiliary FCN head on `c4` (0 or None: no aux head). Heads
        that produce their own aux logits (OCR's soft object regions) use this weight too.
      aux_options: options of the `fcn_aux` head (`in_key="head_input"`: on the feature the
        head consumed, where the head returns it).
      sar: None (no SAR) or a dict of `iseg.losses.sar.SARRegularizer` options (training
        only; it reads the head's classifier input and classifier).
      car: the one CAR switch: None (no CAR), or a `CAROptions` / dict of its fields (`{}`:
        the published defaults). Resolved once against the head's defaults and given to the
        head's CAR block and to `CARLoss`. With a head instance, CAR is the head's own
        (`Head(car=...)`) and this must stay None.
      ignore_label, class_weights, loss_reduction, ohem: pixel cross-entropy settings
        (`ohem` = dict(thresh=..., min_kept=...)).
      align_corners: resize convention for logits and labels.
      l2_weight_decay: coefficient of `sum(w**2)` over every conv/dense kernel added to the
        loss (the original recipe); 0 for optimizers with decoupled weight decay.
      normalization: input normalisation the backbone expects ("minus_one_to_one" or
        "imagenet"); defaults to what the backbone's weights were trained with.
      neck: None / "none" (the head reads the backbone's endpoints) or "sdn" (the semantic
        diffusion neck, `iseg.layers.sdn`, on each endpoint the head reads).
      neck_options: options of the neck (`SemanticDiffusionNeck`; `keys` defaults to the
        head's `endpoint_keys()`).
    """

    def __init__(
        self,
        backbone,
        head,
        num_classes,
        backbone_options=None,
        head_options=None,
        backbone_weights=None,
        aux_weight=0.4,
        aux_options=None,
        car=None,
        sar=None,
        ignore_label=255,
        class_weights=None,
        loss_reduction="valid_mean",
        ohem=None,
        align_corners=True,
        l2_weight_decay=0.0,
        normalization=None,
        neck=None,
        neck_options=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.backbone_options = dict(backbone_options or {})
        self.head_options = dict(head_options or {})
        self.aux_weight = float(aux_weight or 0.0)
        self.aux_options = dict(aux_options or {})
        self.sar = None if sar is None else check_sar_options(sar)
        self.ignore_label = int(ignore_label)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.loss_reduction = loss_reduction
        self.ohem = None if ohem is None else dict(ohem)
        self.align_corners = bool(align_corners)
        self.l2_weight_decay = float(l2_weight_decay)

        if isinstance(backbone, str):
            from iseg.backbones import backbone_normalization, build_backbone

            self.backbone_name = backbone
            self.backbone = build_backbone(
                backbone, weights=backbone_weights, **self.backbone_options
            )
            # what a weight file decided (stem, stride placement, biases, epsilon, input
            # convention) is part of the architecture: saved with the user's options
            self.backbone_options = dict(self.backbone.build_options)
            default_norm = backbone_normalization(backbone, backbone_weights)
        else:
            self.backbone_name = None
            self.backbone = backbone
            default_norm = "minus_one_to_one"
        self.normalization = normalization or default_norm

        from iseg.heads import build_head

        car = CAROptions.create(car)
        if isinstance(head, str):
            from iseg.heads import HEADS

            self.head_name = head
            if car is not None:
                car = car.for_head(HEADS.get(head))
            self.head = build_head(head, self.num_classes, car=car, **self.head_options)
        else:
            if car is not None:
                raise ValueError(
                    "car= applies to a named head; give a head instance its CAR options "
                    "itself (Head(car=...))"
                )
            self.head_name = None
            self.head = head
            car = getattr(head, "car_options", None)
        self.car = car
        self.neck_name, self.neck_options = _check_neck(neck, neck_options)
        self.neck = None
        if self.neck_name is not None:
            from iseg.layers.sdn import SemanticDiffusionNeck

            options = dict(self.neck_options)
            if "keys" not in options:
                options["keys"] = self.head.endpoint_keys()
            self.neck = SemanticDiffusionNeck(name="neck", **options)
        self.car_loss = None
        if car is not None:
            # float32 whatever the dtype policy: CAR is computed in full precision.
            self.car_loss = CARLoss(
                self.num_classes,
                ignore_label=self.ignore_label,
                align_corners=self.align_corners,
                dtype="float32",
                name="car_loss",
                **car.loss_options(),
            )
        self.sar_loss = None
        if self.sar is not None:
            self.sar_loss = SARRegularizer(
                self.num_classes, ignore_label=self.ignore_label, name="sar", **self.sar
            )
        self.aux_head = None
        if self.aux_weight > 0 and not getattr(self.head, "provides_aux_logits", False):
            self.aux_head = build_head("fcn_aux", self.num_classes, **self.aux_options)

        self._trackers = {}
        names = ["ce"]
        if getattr(self.head, "high_level_weight", 0) > 0:  # HFGD's high-level branch
            names.append("high_level")
        if self.aux_weight > 0:
            names.append("aux")
        if self.car is not None:
            names += ["car_intra", "car_inter_c2c", "car_inter_c2p"]
        if self.sar is not None:
            names += ["sar_anchor", "sar_pull", "sar_ready"]
        if self.l2_weight_decay > 0:
            names.append("l2")
        for name in names:
            tracker = keras.metrics.Mean(name=name)
            setattr(self, f"{name}_tracker", tracker)
            self._trackers[name] = tracker

    # ----------------------------------------------------------------- forward
    def build(self, input_shape):
        # Run the training graph symbolically so every layer (the aux head and the CAR
        # block included) creates its weights: `.keras` reloading needs them all.
        # Unknown spatial sizes are traced as 64x64: weights do not depend on them, and
        # JAX's symbolic shapes cannot always prove two strided paths agree.
        shape = tuple(input_shape)
        shape = (shape[0],) + tuple(64 if d is None else d for d in shape[1:3]) + shape[3:]
        spec = keras.KerasTensor(shape, dtype=self.compute_dtype)
        out = self.compute_output_spec(spec, training=True)
        if self.car_loss is not None:  # EMA centres, when enabled, are its weights
            self.car_loss.build(out["feature"].shape)
        if self.sar_loss is not None:
            self.sar_loss.build(out["classifier_input"].shape)
        self.built = True

    def call(self, images, training=None):
        return self.decode(self.encode(images, training), spatial_shape(images), training)

    def encode(self, images, training=None):
        """The backbone's endpoint dict for (normalised) `images`, after the neck when
        there is one: what the head reads."""
        endpoints = self.backbone(images, training=training)
        if self.neck is not None:
            endpoints = self.neck(endpoints, training=training)
        return endpoints

    def decode(self, endpoints, size, training=None):
        """The head (and aux head) on `endpoints`, logits resized to `size` (H, W): what
        `call` returns (logits at inference, the training dict under `training=True`).
        `decode(encode(x), spatial_shape(x))` is `call(x)`; the semi-supervised feature
        perturbation perturbs the endpoints `head_endpoints()` names in between."""
        out = self.head(endpoints, training=training)
        logits = self._upsample(out["logits"], size)
        if not training:
            return logits
        result = {"logits": logits, "feature": out["feature"]}
        if self.sar_loss is not None:
            result["classifier_input"] = out["classifier_input"]
        if out.get("extra_features"):
            result["extra_features"] = list(out["extra_features"])
        if "high_level_logits" in out:
            result["high_level_logits"] = self._upsample(out["high_level_logits"], size)
        if "aux_logits" in out:
            result["aux_logits"] = self._upsample(out["aux_logits"], size)
        elif self.aux_head is not None:
            if "head_input" in out:
                endpoints = {**endpoints, "head_input": out["head_input"]}
            aux = self.aux_head(endpoints, training=training)["logits"]
            result["aux_logits"] = self._upsample(aux, size)
        return result

    def head_endpoints(self):
        """The endpoints the main head reads (e.g. ["c5", "c2"] for DeepLabV3+); the aux
        head, when there is one, reads `aux_options["in_key"]` ("c4") besides."""
        return self.head.endpoint_keys()

    def _upsample(self, logits, size):
        return resize(ops.cast(logits, "float32"), size, align_corners=self.align_corners)

    # ----------------------------------------------------------------- losses
    def _ce(self, labels, logits):
        ohem = self.ohem or {}
        return pixel_cross_entropy(
            labels,
            logits,
            ignore_label=self.ignore_label,
            class_weights=self.class_weights,
            reduction=self.loss_reduction,
            ohem_thresh=ohem.get("thresh"),
            ohem_min_kept=ohem.get("min_kept", 100000),
        )

    def loss_terms(self, labels, outputs, training=True):
        """The separate, already weighted loss terms whose sum is the training loss."""
        if not isinstance(outputs, dict):
            outputs = {"logits": outputs}
        labels = ops.cast(labels, "int32")
        terms = {"ce": self._ce(labels, outputs["logits"])}
        if "high_level" in self._trackers and "high_level_logits" in outputs:
            terms["high_level"] = self.head.high_level_weight * self._ce(
                labels, outputs["high_level_logits"]
            )
        if self.aux_weight > 0 and "aux_logits" in outputs:
            terms["aux"] = self.aux_weight * self._ce(labels, outputs["aux_logits"])
        if training and self.car_loss is not None and "feature" in outputs:
            # One CAR block per head feature (DANet has one per branch): terms add up
            # (with EMA centres on, the blocks share the centre buffer).
            for feature in [outputs["feature"], *outputs.get("extra_features", [])]:
                car = self.car_loss(ops.cast(feature, "float32"), labels)
                for name, value in car.items():
                    key = f"car_{name}"
                    terms[key] = terms[key] + value if key in terms else value
        if training and self.sar_loss is not None and "classifier_input" in outputs:
            sar = self.sar_loss(outputs["classifier_input"], labels, *self.head.sar_classifier())
            self._trackers["sar_ready"].update_state(sar.pop("sar_ready"))  # logged only
            terms.update(sar)
        if training and self.l2_weight_decay > 0:
            terms["l2"] = l2_penalty(self.trainable_weights, self.l2_weight_decay)
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The training loss of this replica's batch, scaled for distribution as Keras'
        own losses are: divided by the number of replicas in sync (1 without a strategy),
        so that the replicas' summed gradients are those of the global-batch loss. The
        per-term trackers record the unscaled terms."""
        terms = self.loss_terms(y, y_pred, training=training)
        return replica_loss(terms, self._trackers, self.losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()

    # ----------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()

        def ser(obj, name):
            return name if name is not None else keras.saving.serialize_keras_object(obj)

        config.update(
            backbone=ser(self.backbone, self.backbone_name),
            head=ser(self.head, self.head_name),
            num_classes=self.num_classes,
            backbone_options=self.backbone_options,
            head_options=self.head_options,
            aux_weight=self.aux_weight,
            aux_options=self.aux_options,
            car=None if self.car is None or self.head_name is None else self.car.to_dict(),
            sar=self.sar,
            ignore_label=self.ignore_label,
            class_weights=self.class_weights,
            loss_reduction=self.loss_reduction,
            ohem=self.ohem,
            align_corners=self.align_corners,
            l2_weight_decay=self.l2_weight_decay,
            normalization=self.normalization,
            neck=self.neck_name,
            neck_options=self.neck_options,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "head"):
            if isinstance(config[key], dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def l2_penalty(weights, decay):
    """`decay * sum(w**2)` over the conv / dense kernels among `weights` (float32)."""
    kernels = [w for w in weights if w.path.split("/")[-1].endswith("kernel")]
    return decay * ops.sum(
        ops.stack([ops.sum(ops.square(ops.cast(w, "float32"))) for w in kernels])
    )


NECKS = ("none", "sdn")


def _check_neck(neck, options):
    """(name or None, options) of a neck, or ValueError naming the bad value."""
    if neck not in (None, *NECKS):
        raise ValueError(f"unknown neck {neck!r}. Valid necks: {', '.join(NECKS)}")
    if neck in (None, "none"):
        if options:
            raise ValueError(f"neck_options {dict(options)} given without a neck")
        return None, {}
    from iseg.layers.sdn import check_neck_options

    return neck, check_neck_options(options or {})
