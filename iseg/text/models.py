"""Scene-text recognizers: FACLSTM (focused-attention ConvLSTM, METHODS.md §7) and the
CRNN baseline (CNN + BiLSTM + CTC, the FC-LSTM family FACLSTM argues against).

Both take images normalised to [-1, 1], `[N, H, W, channels]` at the model's
`image_size`, and own their loss (`compute_loss`), so `compile` + `fit` and the iseg
trainer both train them. Training inputs are `x = {"images", "tokens"}` (the tokens feed
the attention decoder by teacher forcing) and `y = {"tokens", "mask", "mask_weight"}`
(`mask` `[N, H, W]` the character-centre mask at image resolution, `mask_weight` `[N]` 0
for images without character boxes). `recognize(images, beam_width)` returns token ids
`[N, T]` (see `iseg.text.charset`) and the probability of each read sequence.
"""

import keras
from keras import ops

from iseg.distribute import replica_loss
from iseg.text.charset import ALPHANUMERIC, PAD, Charset
from iseg.text.decoding import beam_search, finish, greedy_search
from iseg.text.encoders import build_encoder
from iseg.text.layers import CentreMaskBranch, FocusedAttentionDecoder, focus_features


def _plain(value):
    """Tuples -> lists, recursively (options as they read back from JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _images(inputs):
    return inputs["images"] if isinstance(inputs, dict) else inputs


class TextRecognizer(keras.Model):
    """Shared parts: charset, label length, input size, encoder, loss bookkeeping."""

    normalization = "minus_one_to_one"
    loss_names = ()

    def __init__(self, charset=ALPHANUMERIC, case_sensitive=False, max_length=25,
                 image_size=(32, 100), channels=1, encoder="vgg", encoder_options=None,
                 beam_width=1, **kwargs):
        super().__init__(**kwargs)
        self.charset = Charset(charset, case_sensitive)
        self.max_length = int(max_length)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels = int(channels)
        self.encoder_name = encoder
        self.encoder_options = _plain(dict(encoder_options or {}))
        self.beam_width = int(beam_width)
        self.encoder = build_encoder(encoder, name="encoder", dtype=self.dtype_policy,
                                     **self.encoder_options)
        self._trackers = {n: keras.metrics.Mean(name=n) for n in self.loss_names}
        for name, tracker in self._trackers.items():
            setattr(self, f"{name}_tracker", tracker)

    @property
    def num_classes(self):
        return self.charset.num_classes

    def ensure_built(self):
        if not self.built:
            self.build(self.input_shape_for())

    def input_shape_for(self, batch=None):
        return (batch,) + self.image_size + (self.channels,)

    def _finish_loss(self, terms):
        return replica_loss(terms, self._trackers, self.losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()

    def get_config(self):
        config = super().get_config()
        config.update(charset=self.charset.chars, case_sensitive=self.charset.case_sensitive,
                      max_length=self.max_length, image_size=list(self.image_size),
                      channels=self.channels, encoder=self.encoder_name,
                      encoder_options=self.encoder_options, beam_width=self.beam_width)
        return config


def sequence_cross_entropy(tokens, logits):
    """Mean cross-entropy over the label positions that are not padding."""
    valid = ops.cast(ops.greater_equal(tokens, 0), "float32")
    ce = keras.losses.sparse_categorical_crossentropy(
        ops.maximum(tokens, 0), ops.cast(logits, "float32"), from_logits=True)
    return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)


def teacher_tokens(tokens, go_token):
    """Decoder inputs for teacher forcing: the start symbol, then the label shifted right."""
    prev = ops.maximum(tokens[:, :-1], 0)
    start = ops.full((ops.shape(tokens)[0], 1), go_token, "int32")
    return ops.concatenate([start, ops.cast(prev, "int32")], axis=1)


@keras.saving.register_keras_serializable(package="iseg")
class FACLSTM(TextRecognizer):
    """Encoder -> centre-mask branch -> focused features -> ConvLSTM attention decoder.

    Args (besides `TextRecognizer`'s): `decoder_filters` ConvLSTM channels,
    `attention_units`, `embed_dim`, `kernel_size` (ConvLSTM and attention convs),
    `pooling` of the hidden state for the classifier ("avg" / "max"), `focus` how the
    centre mask M enters ("residual": F(1+M), "multiply": FM, "none"), `mask_filters`,
    `mask_loss_weight` (BCE of the mask), `ce_weight` (per-step cross-entropy),
    `classifier_units` (a hidden ReLU layer of that width before the logits; 0: linear).
    """

    loss_names = ("ce", "mask", "attention")

    def __init__(self, decoder_filters=64, attention_units=64, embed_dim=32, kernel_size=3,
                 pooling="avg", coordinates=True, coverage_kernel=(3, 9), focus="residual",
                 mask_filters=32, classifier_units=0,
                 mask_loss_weight=1.0, attention_loss_weight=1.0, ce_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        focus_features(0.0, 0.0, focus)  # validates the mode
        self.focus = focus
        self.mask_loss_weight = float(mask_loss_weight)
        self.attention_loss_weight = float(attention_loss_weight)
        self.ce_weight = float(ce_weight)
        self.mask_branch = CentreMaskBranch(mask_filters, name="mask_branch",
                                            dtype=self.dtype_policy)
        self.decoder = FocusedAttentionDecoder(
            self.num_classes, decoder_filters, attention_units, embed_dim, kernel_size,
            pooling, coordinates, coverage_kernel, classifier_units, name="decoder",
            dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = tuple(input_shape["images"] if isinstance(input_shape, dict) else input_shape)
        self.encoder.build(shape)
        features = self.encoder.compute_output_shape(shape)
        self.mask_branch.build(features)
        self.decoder.build(features)
        self.built = True

    def encode(self, images, training=None):
        """(focused features, centre-mask logits)."""
        features = self.encoder(images, training=training)
        mask_logits = self.mask_branch(features, training=training)
        mask = ops.sigmoid(ops.cast(mask_logits, features.dtype))
        return focus_features(features, mask, self.focus), mask_logits

    def call(self, inputs, training=None):
        focused, mask_logits = self.encode(_images(inputs), training=training)
        if isinstance(inputs, dict) and "tokens" in inputs:
            prev = teacher_tokens(inputs["tokens"], self.decoder.go_token)
            logits, attention = self.decoder(focused, prev)
            return {"logits": logits, "attention": attention, "mask_logits": mask_logits}
        tokens, log_probs = self._search(focused, self.beam_width)
        return {"tokens": tokens, "scores": ops.exp(log_probs), "mask_logits": mask_logits}

    def _search(self, focused, beam_width):
        constants, state = self.decoder.start(focused)

        def step(prev, constants, state):
            logits, _, state = self.decoder.step(prev, constants, state)
            return logits, state

        return beam_search(step, constants, state, ops.shape(focused)[0],
                           self.max_length + 1, self.decoder.go_token, beam_width)

    def recognize(self, images, beam_width=1):
        """(tokens `[N, max_length + 1]`, sequence probabilities `[N]`)."""
        self.ensure_built()
        focused, _ = self.encode(images, training=False)
        tokens, log_probs = self._search(focused, beam_width)
        return tokens, ops.exp(log_probs)

    def greedy(self, images):
        """Greedy decoding (as `recognize(images, 1)`; kept for tests and clarity)."""
        self.ensure_built()
        focused, _ = self.encode(images, training=False)
        constants, state = self.decoder.start(focused)

        def step(prev, constants, state):
            logits, _, state = self.decoder.step(prev, constants, state)
            return logits, state

        tokens, log_probs = greedy_search(step, constants, state, ops.shape(images)[0],
                                          self.max_length + 1, self.decoder.go_token)
        return tokens, ops.exp(log_probs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = {"ce": self.ce_weight * sequence_cross_entropy(y["tokens"], y_pred["logits"])}
        if self.mask_loss_weight > 0:
            terms["mask"] = self.mask_loss_weight * self.mask_loss(
                y["mask"], y["mask_weight"], y_pred["mask_logits"])
        if self.attention_loss_weight > 0:
            terms["attention"] = self.attention_loss_weight * self.attention_loss(
                y["boxes"], y["tokens"], y["mask_weight"], y_pred["attention"])
        return self._finish_loss(terms)

    def attention_loss(self, boxes, tokens, weight, attention):
        """Cross-entropy of each character step's attention map against a Gaussian at
        that character's box centre (sigma: a quarter of the box, at least half a cell),
        averaged over the characters of images with weight > 0. `boxes` `[N, L, 4]`
        (x0, y0, x1, y1 in input pixels), `attention` `[N, L + 1, h, w]`."""
        sh, sw = self.encoder.stride
        length = ops.shape(boxes)[1]
        att = ops.cast(attention[:, :length], "float32")
        h, w = ops.shape(att)[2], ops.shape(att)[3]
        boxes = ops.cast(boxes, "float32")
        cx = (boxes[..., 0] + boxes[..., 2]) / (2.0 * sw)
        cy = (boxes[..., 1] + boxes[..., 3]) / (2.0 * sh)
        sx = ops.maximum((boxes[..., 2] - boxes[..., 0]) / (4.0 * sw), 0.5)
        sy = ops.maximum((boxes[..., 3] - boxes[..., 1]) / (4.0 * sh), 0.5)
        xs = ops.arange(w, dtype="float32") + 0.5
        ys = ops.arange(h, dtype="float32") + 0.5
        gx = ops.exp(-ops.square(xs[None, None, :] - cx[..., None]) / (2 * sx[..., None] ** 2))
        gy = ops.exp(-ops.square(ys[None, None, :] - cy[..., None]) / (2 * sy[..., None] ** 2))
        target = gy[..., :, None] * gx[..., None, :]
        target = target / ops.maximum(ops.sum(target, axis=(2, 3), keepdims=True), 1e-12)
        ce = -ops.sum(target * ops.log(att + 1e-8), axis=(2, 3))  # [N, L]
        valid = ops.cast(ops.greater(tokens[:, :length], 0), "float32") * ops.cast(
            weight, "float32")[:, None]
        return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)

    def mask_loss(self, mask, mask_weight, mask_logits):
        """BCE of the centre-mask logits against the image-resolution mask averaged over
        each feature cell, averaged over the images with weight > 0."""
        stride = self.encoder.stride
        target = ops.average_pool(ops.cast(mask, "float32")[..., None], stride, stride,
                                  padding="valid")
        bce = keras.losses.binary_crossentropy(target, ops.cast(mask_logits, "float32"),
                                               from_logits=True)  # [N, h, w]
        weight = ops.cast(mask_weight, "float32")
        per_image = ops.mean(bce, axis=(1, 2))
        return ops.sum(per_image * weight) / ops.maximum(ops.sum(weight), 1.0)

    def get_config(self):
        config = super().get_config()
        d = self.decoder
        config.update(decoder_filters=d.filters, attention_units=d.attention_units,
                      embed_dim=d.embed_dim, kernel_size=d.kernel_size, pooling=d.pooling,
                      coordinates=d.coordinates,
                      coverage_kernel=d.get_config()["coverage_kernel"], focus=self.focus,
                      classifier_units=d.classifier_units,
                      mask_filters=self.mask_branch.filters,
                      mask_loss_weight=self.mask_loss_weight,
                      attention_loss_weight=self.attention_loss_weight,
                      ce_weight=self.ce_weight)
        return config


@keras.saving.register_keras_serializable(package="iseg")
class CRNN(TextRecognizer):
    """Encoder -> mean over the height -> `num_layers` BiLSTMs (`hidden` units per
    direction) -> per-column logits (0 = CTC blank) -> CTC loss; greedy or beam decoding."""

    loss_names = ("ctc",)

    def __init__(self, hidden=128, num_layers=2, **kwargs):
        super().__init__(**kwargs)
        self.hidden = int(hidden)
        self.num_layers = int(num_layers)
        dt = dict(dtype=self.dtype_policy)
        self.rnns = [keras.layers.Bidirectional(keras.layers.LSTM(hidden, return_sequences=True,
                                                                  **dt), name=f"bilstm{i + 1}",
                                                **dt)
                     for i in range(self.num_layers)]
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier", **dt)

    def build(self, input_shape):
        shape = tuple(input_shape["images"] if isinstance(input_shape, dict) else input_shape)
        self.encoder.build(shape)
        _, _, w, c = self.encoder.compute_output_shape(shape)
        seq = (shape[0], w, c)
        for rnn in self.rnns:
            rnn.build(seq)
            seq = (shape[0], w, 2 * self.hidden)
        self.classifier.build(seq)
        self.built = True

    def frame_logits(self, images, training=None):
        x = ops.mean(self.encoder(images, training=training), axis=1)
        for rnn in self.rnns:
            x = rnn(x, training=training)
        return ops.cast(self.classifier(x), "float32")

    def call(self, inputs, training=None):
        logits = self.frame_logits(_images(inputs), training=training)
        if isinstance(inputs, dict) and "tokens" in inputs:
            return {"logits": logits}
        tokens, scores = self._decode(logits, self.beam_width)
        return {"tokens": tokens, "scores": scores}

    def recognize(self, images, beam_width=1):
        self.ensure_built()
        return self._decode(self.frame_logits(images, training=False), beam_width)

    def _decode(self, logits, beam_width):
        n, t = ops.shape(logits)[0], ops.shape(logits)[1]
        lengths = ops.full((n,), t, "int32")
        logp = ops.log_softmax(logits, axis=-1)
        if beam_width <= 1:
            decoded, _ = ops.ctc_decode(logits, lengths, strategy="greedy", mask_index=0)
            log_probs = ops.sum(ops.max(logp, axis=-1), axis=1)
        else:
            decoded, log_probs = ops.ctc_decode(logits, lengths, strategy="beam_search",
                                                beam_width=beam_width, mask_index=0)
            log_probs = log_probs[:, 0]
        decoded = ops.cast(decoded[0], "int32")
        decoded = ops.concatenate([decoded, ops.full((n, 1), PAD, "int32")], axis=1)
        tokens, _ = finish(ops.maximum(decoded, 0), ops.zeros(ops.shape(decoded)))
        return tokens, ops.exp(log_probs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        tokens = ops.cast(y["tokens"], "int32")
        logits = y_pred["logits"]
        n, t = ops.shape(logits)[0], ops.shape(logits)[1]
        lengths = ops.sum(ops.cast(ops.greater(tokens, 0), "int32"), axis=1)
        ctc = ops.ctc_loss(ops.maximum(tokens, 0), logits, lengths, ops.full((n,), t, "int32"),
                           mask_index=0)
        return self._finish_loss({"ctc": ops.mean(ctc)})

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, num_layers=self.num_layers)
        return config


MODELS = {"faclstm": FACLSTM, "crnn": CRNN}


def build_text_model(name, **options):
    """A text model by name ("faclstm" or "crnn")."""
    if name not in MODELS:
        raise ValueError(f"Unknown text model {name!r}. Valid text models: "
                         f"{', '.join(sorted(MODELS))}")
    return MODELS[name](**options)
