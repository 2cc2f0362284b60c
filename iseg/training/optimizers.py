"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW; decoupled weight decay with norm /
bias / position-bias exclusions; layer-wise learning-rate decay; a head learning-rate
multiplier; clipping; accumulation; float16 loss scaling."""

import re

import keras
from absl import logging

OPTIMIZERS = ("sgd", "adam", "adamw")

#: Variable-name fragments that never get weight decay (besides every rank <= 1 variable:
#: biases and normalisation scales/offsets).
NO_DECAY_PATTERNS = ("position", "pos_embed", "cls_token", "relative_bias", "rel_pos")


def no_decay_variables(variables):
    """Variables excluded from weight decay: biases, norm weights, position biases."""
    out = []
    for v in variables:
        path = getattr(v, "path", v.name).lower()
        if len(v.shape) <= 1 or any(p in path for p in NO_DECAY_PATTERNS):
            out.append(v)
    return out


_STAGE_RE = re.compile(r"(?:stage|stages|layer|res)[_/]?(\d+)")
_BLOCK_RE = re.compile(r"(?:block|blocks)[_/]?(\d+)")
_DOWN_RE = re.compile(r"(?:downsample|merge|merging|patch_merging)[_/]?(\d+)")


def layer_ids(model):
    """Layer index of every trainable variable for layer-wise LR decay (ConvNeXt / Swin).

    Backbone variables of stage s / block b get consecutive ids 1..L in (stage, block)
    order (a downsampling layer before stage s goes with that stage's first id); backbone
    variables before the first stage (stem / patch embedding) get 0, those after the last
    stage (final norm) L; everything outside the backbone (heads) L+1.
    Returns (dict id(variable) -> layer id, L).
    """
    backbone = getattr(model, "backbone", None)
    backbone_vars = list(backbone.trainable_variables) if backbone is not None else []
    keys = {}
    for v in backbone_vars:
        stage, block, down = (_STAGE_RE.search(v.path), _BLOCK_RE.search(v.path),
                              _DOWN_RE.search(v.path))
        if stage:
            keys[id(v)] = (int(stage.group(1)), int(block.group(1)) if block else -1)
        elif down:
            keys[id(v)] = (int(down.group(1)) + 1, -1)
    order = sorted(set(keys.values()))
    index = {key: i + 1 for i, key in enumerate(order)}
    num_layers = len(order)
    ids, seen_stage = {}, False
    for v in backbone_vars:
        if id(v) in keys:
            ids[id(v)] = index[keys[id(v)]]
            seen_stage = True
        else:
            ids[id(v)] = num_layers if seen_stage else 0
    for v in model.trainable_variables:
        ids.setdefault(id(v), num_layers + 1)
    return ids, num_layers


def _with_lr_scales(base_cls):
    class LayerDecayOptimizer(base_cls):
        """`base_cls` with a per-variable learning-rate multiplier."""

        def set_lr_scales(self, scales):
            self._lr_scales = dict(scales)

        def update_step(self, gradient, variable, learning_rate):
            scale = getattr(self, "_lr_scales", {}).get(self._var_key(variable), 1.0)
            if scale != 1.0:
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

    LayerDecayOptimizer.__name__ = base_cls.__name__
    return LayerDecayOptimizer


def build_optimizer(name, learning_rate, *, momentum=0.9, nesterov=False, beta_1=0.9,
                    beta_2=0.999, weight_decay=0.0, clip_norm=None, grad_accum_steps=1,
                    layer_decay=None, head_lr_multiplier=1.0, loss_scale=False):
    """A Keras optimizer. `learning_rate` is a float or a schedule. With `layer_decay` or
    `head_lr_multiplier` != 1 it takes per-variable rates (set by `prepare_optimizer`)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}. Valid optimizers: {', '.join(OPTIMIZERS)}")
    common = dict(learning_rate=learning_rate, global_clipnorm=clip_norm,
                  weight_decay=weight_decay or None,
                  gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1 else None)
    cls = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
           "adamw": keras.optimizers.AdamW}[name]
    if layer_decay or head_lr_multiplier != 1.0:
        cls = _with_lr_scales(cls)
    if name == "sgd":
        opt = cls(momentum=momentum, nesterov=nesterov, **common)
    elif name == "adamw":
        opt = cls(beta_1=beta_1, beta_2=beta_2, **common)
    else:
        if weight_decay:
            logging.warning("adam with weight_decay is decoupled decay (= AdamW)")
        opt = cls(beta_1=beta_1, beta_2=beta_2, **common)
    if loss_scale:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def lr_scales(model, layer_decay=None, head_lr_multiplier=1.0, extra_variables=(),
              extra_backbone_variables=()):
    """{id(variable): learning-rate multiplier} of the variables not trained at the base
    rate: `layer_decay` scales the model's variables (see `layer_ids`); every trainable
    variable of `model` and `extra_variables` outside the backbones (the model's and
    `extra_backbone_variables`) is further multiplied by `head_lr_multiplier`."""
    scales = {}
    if layer_decay:
        ids, num_layers = layer_ids(model)
        if num_layers == 0:
            logging.warning("layer_decay: no stage/block structure found in the backbone "
                            "variable names; every variable keeps the base learning rate")
        scales = {id(v): layer_decay ** (num_layers + 1 - ids[id(v)])
                  for v in model.trainable_variables}
    if head_lr_multiplier != 1.0:
        backbone = getattr(model, "backbone", None)
        backbone_ids = {id(v) for v in list(extra_backbone_variables) + list(
            backbone.trainable_variables if backbone is not None else [])}
        for v in list(model.trainable_variables) + list(extra_variables):
            if id(v) not in backbone_ids:
                scales[id(v)] = scales.get(id(v), 1.0) * head_lr_multiplier
    return scales


def prepare_optimizer(optimizer, model, layer_decay=None, extra_variables=(),
                      head_lr_multiplier=1.0, extra_backbone_variables=()):
    """Exclude no-decay variables, set the per-variable learning-rate scales (`lr_scales`)
    and build the slots of the model's trainable variables and `extra_variables`."""
    inner = inner_optimizer(optimizer)
    variables = list(model.trainable_variables) + list(extra_variables)
    if inner.weight_decay:
        inner.exclude_from_weight_decay(var_list=no_decay_variables(variables))
    scales = lr_scales(model, layer_decay, head_lr_multiplier, extra_variables,
                       extra_backbone_variables)
    if scales:
        inner.set_lr_scales({inner._var_key(v): scales[id(v)] for v in variables
                             if id(v) in scales})
    optimizer.build(variables)
    return optimizer


def current_learning_rate(optimizer):
    inner = inner_optimizer(optimizer)
    lr = inner.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
