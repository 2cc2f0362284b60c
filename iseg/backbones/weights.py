"""Pretrained weight import, mapped by structure.

Each source format has a fixed, known layout; the mapping walks our model's blocks in
order and names the exact source tensor of every variable (no fuzzy name matching). Every
shape is checked, and source tensors left unused (other than a classifier head and
non-parameter buffers) are an error, so a file of a different architecture cannot load
silently.

Sources:
- keras.applications weight files (`.h5` legacy or `.weights.h5`) of ResNet50/101/152 and
  ConvNeXt: read by building the keras.applications model and loading the file with Keras
  (so both file formats work), then taken layer by layer.
- timm `.safetensors` files of ResNet (v1 and deep stem, ResNet-D shortcuts), ConvNeXt and
  Swin: read with the NumPy reader in `iseg.backbones.safetensors`.
"""

import pathlib
import re

import numpy as np

import keras
from absl import logging

from iseg.backbones.convnext import ConvNeXtBlock, ConvNeXtDownsample
from iseg.backbones.resnet import ResNetBlock
from iseg.backbones.safetensors import read_safetensors
from iseg.backbones.swin import PatchMerging, SwinBlock

WEIGHTS_FLAG = "--backbone_weights"

KERAS_APP_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet152": "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "convnext_tiny": "convnext_tiny_notop.h5",
    "convnext_small": "convnext_small_notop.h5",
    "convnext_base": "convnext_base_notop.h5",
    "convnext_large": "convnext_large_notop.h5",
    "convnext_xlarge": "convnext_xlarge_notop.h5",
}
KERAS_APP_URLS = {
    "resnet": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "convnext": "https://storage.googleapis.com/tensorflow/keras-applications/convnext/",
}
TIMM_HINT = {
    "resnet": "timm 'resnet50d' / 'resnet101d' (deep stem) or 'resnet50' model.safetensors",
    "convnext": "timm 'convnext_tiny' (etc.) model.safetensors",
    "swin": "timm 'swin_tiny_patch4_window7_224' (etc.) model.safetensors",
    "hrnet": "timm 'hrnet_w18' / 'hrnet_w48' model.safetensors",
}


def _torch_conv(w):
    return np.transpose(w, (2, 3, 1, 0))


def _torch_dwconv(w):
    return np.transpose(w, (2, 3, 0, 1))


def _torch_dense(w):
    return w.reshape(w.shape[0], -1).T


class _Assigner:
    """Collects (variable, array, source key) pairs, checks shapes, assigns."""

    def __init__(self, source_name):
        self.source_name = source_name
        self.pairs = []

    def add(self, variable, array, key):
        array = np.asarray(array)
        if tuple(variable.shape) != tuple(array.shape):
            raise ValueError(
                f"{self.source_name}: shape mismatch for {variable.path}: model "
                f"{tuple(variable.shape)} vs source {key!r} {tuple(array.shape)}. The file "
                f"does not match this backbone's configuration."
            )
        self.pairs.append((variable, array))

    def assign(self, model):
        for variable, array in self.pairs:
            variable.assign(array.astype(keras.backend.standardize_dtype(variable.dtype)))
        # the optional per-endpoint norms (`out_norms`) are new layers: kept at init
        expected = [v for v in model.weights if not v.path.startswith("out_norm")]
        logging.info(
            "%s: assigned %d of %d variables", self.source_name, len(self.pairs), len(expected)
        )
        assigned = {id(v) for v, _ in self.pairs}
        missing = [v.path for v in expected if id(v) not in assigned]
        if missing:
            raise ValueError(f"{self.source_name}: no source for variables {missing[:10]}")


def _layers(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def _stage_block(name):
    """'conv3_block2' -> (3, 2); 'stage1_block3' -> (1, 3)."""
    head, block = name.split("_block")
    return int(head.lstrip("convstage")), int(block)


# ----------------------------------------------------------------------------- timm


class TimmSource:
    def __init__(self, path, name, builder):
        self.path = pathlib.Path(path)
        self.name = name
        self.family = builder.family
        self.tensors = read_safetensors(self.path)
        self.description = f"timm safetensors {self.path}"
        self.used = set()

    def t(self, key):
        if key not in self.tensors:
            raise ValueError(
                f"{self.path}: tensor {key!r} is missing; this is not a timm "
                f"{self.family} checkpoint matching backbone {self.name!r}"
            )
        self.used.add(key)
        return self.tensors[key]

    def layout_defaults(self):
        if self.family == "resnet":
            if "conv1.0.weight" in self.tensors:
                stem, width = "deep", self.tensors["conv1.0.weight"].shape[0]
            elif "conv1.weight" in self.tensors:
                stem, width = "v1", self.tensors["conv1.weight"].shape[0]
            else:
                raise ValueError(f"{self.path}: no 'conv1' tensors; not a timm ResNet file")
            return dict(
                stem=stem,
                stem_width=int(width),
                stride_in="first",
                stride_conv="3x3",
                conv_bias=False,
                avg_down="layer2.0.downsample.2.weight" in self.tensors,
                bn_epsilon=1e-5,
            )
        if self.family == "hrnet":
            if "conv1.weight" not in self.tensors:
                raise ValueError(f"{self.path}: no 'conv1' tensors; not a timm HRNet file")
            return dict(stem_width=int(self.tensors["conv1.weight"].shape[0]), bn_epsilon=1e-5)
        if self.family == "swin":
            key = "layers.0.blocks.0.attn.relative_position_bias_table"
            if key in self.tensors:
                side = int(round(np.sqrt(self.tensors[key].shape[0])))
                return dict(window_size=(side + 1) // 2)
        return {}

    def _bn(self, a, layer, prefix):
        a.add(layer.gamma, self.t(prefix + "weight"), prefix + "weight")
        a.add(layer.beta, self.t(prefix + "bias"), prefix + "bias")
        a.add(layer.moving_mean, self.t(prefix + "running_mean"), prefix + "running_mean")
        a.add(layer.moving_variance, self.t(prefix + "running_var"), prefix + "running_var")

    def _conv(self, a, layer, key, depthwise=False):
        w = self.t(key + ".weight")
        kernel = _torch_dwconv(w) if depthwise else _torch_conv(w)
        a.add(layer.kernel, kernel, key + ".weight")
        if layer.use_bias:
            a.add(layer.bias, self.t(key + ".bias"), key + ".bias")

    def _dense(self, a, layer, key):
        a.add(layer.kernel, _torch_dense(self.t(key + ".weight")), key + ".weight")
        if layer.use_bias:
            a.add(layer.bias, self.t(key + ".bias"), key + ".bias")

    def _ln(self, a, layer, key):
        a.add(layer.gamma, self.t(key + ".weight"), key + ".weight")
        a.add(layer.beta, self.t(key + ".bias"), key + ".bias")

    def _resnet(self, a, model):
        stem = model.get_layer("stem")
        if stem.stem == "v1":
            self._conv(a, stem.convs[0], "conv1")
            self._bn(a, stem.bns[0], "bn1.")
        else:
            for conv, bn, ck, bk in zip(
                stem.convs,
                stem.bns,
                ("conv1.0", "conv1.3", "conv1.6"),
                ("conv1.1.", "conv1.4.", "bn1."),
            ):
                self._conv(a, conv, ck)
                self._bn(a, bn, bk)
        for block in _layers(model, ResNetBlock):
            stage, j = _stage_block(block.name)
            self._res_block(a, block, f"layer{stage - 1}.{j - 1}.")
        return ("fc.", "num_batches_tracked")

    def _res_block(self, a, block, prefix):
        for i, (conv, bn) in enumerate(zip(block.convs, block.bns)):
            self._conv(a, conv, f"{prefix}conv{i + 1}")
            self._bn(a, bn, f"{prefix}bn{i + 1}.")
        if block.shortcut_conv is not None:
            k = 0 if block.shortcut == "conv" else 1
            self._conv(a, block.shortcut_conv, f"{prefix}downsample.{k}")
            self._bn(a, block.shortcut_bn, f"{prefix}downsample.{k + 1}.")

    def _chain(self, a, chain, prefixes):
        """ConvBNChain step i <- `{prefixes[i]}0` (conv) and `{prefixes[i]}1` (BN)."""
        for conv, bn, prefix in zip(chain.convs, chain.bns, prefixes):
            self._conv(a, conv, prefix + "0")
            self._bn(a, bn, prefix + "1.")

    def _hrnet(self, a, model):
        for k in (1, 2):
            chain = model.get_layer(f"stem{k}")
            self._conv(a, chain.convs[0], f"conv{k}")
            self._bn(a, chain.bns[0], f"bn{k}.")
        for layer in model.layers:
            name = layer.name
            if isinstance(layer, ResNetBlock) and name.startswith("layer1_"):
                self._res_block(a, layer, f"layer1.{int(name.split('block')[1]) - 1}.")
            elif isinstance(layer, ResNetBlock):  # stage{s}_module{m}_branch{b}_block{k}
                s, m, b, k = (int(n) for n in re.findall(r"\d+", name))
                self._res_block(a, layer, f"stage{s}.{m - 1}.branches.{b}.{k - 1}.")
            elif name.startswith("transition"):  # transition{t}_{i}; a new branch nests once
                t, i = name[len("transition") :].split("_")
                nest = "0." if layer.specs[0][2] == 2 else ""
                self._chain(a, layer, [f"transition{t}.{i}.{nest}"])
            elif name.startswith("stage") and "_fuse" in name:
                s, m, i = (int(n) for n in re.findall(r"\d+", name))
                for j, path in layer.paths.items():
                    prefix = f"stage{s}.{m - 1}.fuse_layers.{i}.{j}."
                    steps = [prefix] if j > i else [f"{prefix}{k}." for k in range(i - j)]
                    self._chain(a, path, steps)
        return ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.",
                "num_batches_tracked")

    def _convnext(self, a, model):
        stem = model.get_layer("stem")
        self._conv(a, stem.conv, "stem.0")
        self._ln(a, stem.norm, "stem.1")
        for layer in _layers(model, ConvNeXtDownsample):
            if layer.stem:
                continue
            i = int(layer.name[len("downsample") :])
            self._ln(a, layer.norm, f"stages.{i}.downsample.0")
            self._conv(a, layer.conv, f"stages.{i}.downsample.1")
        for block in _layers(model, ConvNeXtBlock):
            stage, j = _stage_block(block.name)
            prefix = f"stages.{stage - 1}.blocks.{j - 1}."
            self._conv(a, block.dwconv, prefix + "conv_dw", depthwise=True)
            self._ln(a, block.norm, prefix + "norm")
            self._dense(a, block.fc1, prefix + "mlp.fc1")
            self._dense(a, block.fc2, prefix + "mlp.fc2")
            if block.gamma is not None:
                a.add(block.gamma, self.t(prefix + "gamma"), prefix + "gamma")
        if _has_layer(model, "norm"):
            self._ln(a, model.get_layer("norm"), "head.norm")
        return ("head.fc.", "num_batches_tracked")

    def _swin(self, a, model):
        embed = model.get_layer("patch_embed")
        self._conv(a, embed.proj, "patch_embed.proj")
        self._ln(a, embed.norm, "patch_embed.norm")
        # timm >= 0.9 keeps the merging that starts stage i in layers.i.downsample;
        # older timm (and the original code) keep the merging that ends stage i there.
        old_layout = "layers.0.downsample.reduction.weight" in self.tensors
        for layer in _layers(model, PatchMerging):
            i = int(layer.name[len("merge") :])
            prefix = f"layers.{i - 1 if old_layout else i}.downsample."
            self._ln(a, layer.norm, prefix + "norm")
            self._dense(a, layer.reduction, prefix + "reduction")
        for block in _layers(model, SwinBlock):
            stage, j = _stage_block(block.name)
            prefix = f"layers.{stage - 1}.blocks.{j - 1}."
            self._ln(a, block.norm1, prefix + "norm1")
            self._dense(a, block.qkv, prefix + "attn.qkv")
            self._dense(a, block.proj, prefix + "attn.proj")
            key = prefix + "attn.relative_position_bias_table"
            a.add(block.relative_position_bias_table, self.t(key), key)
            self._ln(a, block.norm2, prefix + "norm2")
            self._dense(a, block.fc1, prefix + "mlp.fc1")
            self._dense(a, block.fc2, prefix + "mlp.fc2")
        if _has_layer(model, "norm"):
            self._ln(a, model.get_layer("norm"), "norm")
        return ("head.", "relative_position_index", "attn_mask")

    def load_into(self, model):
        a = _Assigner(str(self.path))
        ignored = getattr(self, "_" + self.family)(a, model)
        unused = [
            k for k in self.tensors
            if k not in self.used and not any(k.startswith(p) or k.endswith(p) for p in ignored)
        ]
        if unused:
            raise ValueError(
                f"{self.path}: {len(unused)} tensors have no place in backbone {self.name!r} "
                f"(different depth or layout?), e.g. {sorted(unused)[:8]}"
            )
        a.assign(model)


# ------------------------------------------------------------------ keras.applications


def _keras_app(name, builder):
    apps = keras.applications
    if builder.family == "resnet":
        fns = {50: apps.ResNet50, 101: apps.ResNet101, 152: apps.ResNet152}
        if builder.depth not in fns:
            raise ValueError(
                f"keras.applications has no ResNet-{builder.depth}; use a timm .safetensors "
                f"file for backbone {name!r}"
            )
        return fns[builder.depth], {}
    if builder.family == "convnext":
        fn = {
            "tiny": apps.ConvNeXtTiny,
            "small": apps.ConvNeXtSmall,
            "base": apps.ConvNeXtBase,
            "large": apps.ConvNeXtLarge,
            "xlarge": apps.ConvNeXtXLarge,
        }[builder.size]
        return fn, {}
    raise ValueError(
        f"keras.applications has no weights for backbone {name!r}; pass a "
        f"{TIMM_HINT[builder.family]} file instead"
    )


class KerasAppSource:
    def __init__(self, path, name, builder, app_model=None):
        self.path = pathlib.Path(path) if path is not None else None
        self.name = name
        self.family = builder.family
        self.description = f"keras.applications weights {self.path or 'imagenet'}"
        if app_model is None:
            app_model = self._load(builder)
        self.app = app_model
        self.arrays = {layer.name: layer.get_weights() for layer in app_model.layers}
        self.used = set()

    def _load(self, builder):
        fn, kwargs = _keras_app(self.name, builder)
        errors = []
        for include_top in (False, True):
            shape = (None, None, 3) if not include_top else None
            model = fn(weights=None, include_top=include_top, input_shape=shape, **kwargs)
            try:
                model.load_weights(str(self.path))
                return model
            except ValueError as e:
                errors.append(str(e).splitlines()[0])
        raise ValueError(
            f"{self.path} is not a keras.applications weight file of {fn.__name__} "
            f"(with or without top): {errors}"
        )

    def layout_defaults(self):
        if self.family == "resnet":
            return dict(
                stem="v1",
                stem_width=64,
                stride_in="first",
                stride_conv="1x1",
                conv_bias=True,
                avg_down=False,
                bn_epsilon=1.001e-5,
                input_convention="caffe",
            )
        return {}

    def w(self, layer_name):
        if layer_name not in self.arrays:
            raise ValueError(f"{self.description}: no layer {layer_name!r}")
        self.used.add(layer_name)
        return self.arrays[layer_name]

    def _pair(self, a, layer, layer_name, variables):
        arrays = self.w(layer_name)
        if len(arrays) != len(variables):
            raise ValueError(
                f"{self.description}: layer {layer_name!r} has {len(arrays)} arrays, "
                f"{layer.name} expects {len(variables)}"
            )
        for v, arr in zip(variables, arrays):
            a.add(v, arr, layer_name)

    def _resnet(self, a, model):
        stem = model.get_layer("stem")
        if stem.stem != "v1":
            raise ValueError("keras.applications ResNet weights need stem='v1'")
        self._pair(a, stem.convs[0], "conv1_conv", stem.convs[0].weights)
        self._pair(a, stem.bns[0], "conv1_bn", stem.bns[0].weights)
        for block in _layers(model, ResNetBlock):
            for i, (conv, bn) in enumerate(zip(block.convs, block.bns)):
                self._pair(a, conv, f"{block.name}_{i + 1}_conv", conv.weights)
                self._pair(a, bn, f"{block.name}_{i + 1}_bn", bn.weights)
            if block.shortcut_conv is not None:
                self._pair(
                    a, block.shortcut_conv, f"{block.name}_0_conv", block.shortcut_conv.weights
                )
                self._pair(a, block.shortcut_bn, f"{block.name}_0_bn", block.shortcut_bn.weights)

    def _convnext(self, a, model):
        p = self.app.name
        stem = model.get_layer("stem")
        self._pair(a, stem, f"{p}_stem", stem.conv.weights + stem.norm.weights)
        for layer in _layers(model, ConvNeXtDownsample):
            if layer.stem:
                continue
            i = int(layer.name[len("downsample") :])
            self._pair(
                a, layer, f"{p}_downsampling_block_{i - 1}", layer.norm.weights + layer.conv.weights
            )
        for block in _layers(model, ConvNeXtBlock):
            stage, j = _stage_block(block.name)
            q = f"{p}_stage_{stage - 1}_block_{j - 1}"
            kernel, bias = self.w(q + "_depthwise_conv")
            a.add(block.dwconv.kernel, kernel.reshape(block.dwconv.kernel.shape), q)
            a.add(block.dwconv.bias, bias, q)
            self._pair(a, block.norm, q + "_layernorm", block.norm.weights)
            self._pair(a, block.fc1, q + "_pointwise_conv_1", block.fc1.weights)
            self._pair(a, block.fc2, q + "_pointwise_conv_2", block.fc2.weights)
            if block.gamma is not None:
                self._pair(a, block, q + "_layer_scale", [block.gamma])
        if _has_layer(model, "norm"):
            # the last LayerNorm: unnamed without top, "<name>_head_layernorm" with top
            final = [
                layer.name
                for layer in self.app.layers
                if isinstance(layer, keras.layers.LayerNormalization)
                and not layer.name.startswith(f"{p}_stage_")
            ]
            if len(final) != 1:
                raise ValueError(f"{self.description}: expected one final LayerNorm, got {final}")
            norm = model.get_layer("norm")
            self._pair(a, norm, final[0], norm.weights)

    def load_into(self, model):
        a = _Assigner(self.description)
        getattr(self, "_" + self.family)(a, model)
        unused = [k for k, v in self.arrays.items() if v and k not in self.used]
        unused = [k for k in unused if not k.endswith(("predictions", "head_dense"))]
        if unused:
            raise ValueError(
                f"{self.description}: layers {unused[:8]} have no place in backbone "
                f"{self.name!r} (different depth or layout?)"
            )
        a.assign(model)


def _imagenet(name, builder):
    """keras.applications' ImageNet weights (downloaded to ~/.keras/models)."""
    deep_resnet = builder.family == "resnet" and builder.defaults.get("stem") == "deep"
    if builder.family in ("swin", "hrnet") or deep_resnet:
        raise ValueError(
            f"No keras.applications ImageNet weights exist for backbone {name!r}. Download "
            f"{TIMM_HINT[builder.family]} from the Hugging Face hub and pass its path as "
            f"weights=PATH (flag {WEIGHTS_FLAG}=PATH)."
        )
    fn, kwargs = _keras_app(name, builder)
    base = f"resnet{builder.depth}" if builder.family == "resnet" else name
    file_name = KERAS_APP_FILES.get(base, "?")
    try:
        app = fn(weights="imagenet", include_top=False, input_shape=(None, None, 3), **kwargs)
    except Exception as e:  # keras' downloader raises a plain Exception when offline
        raise ValueError(
            f"Could not get the ImageNet weights for backbone {name!r} ({e}). Download "
            f"{KERAS_APP_URLS[builder.family]}{file_name} on a machine with internet access "
            f"and pass its path as weights=PATH (flag {WEIGHTS_FLAG}=PATH), or copy it to "
            f"~/.keras/models/{file_name}."
        ) from None
    return KerasAppSource(None, name, builder, app_model=app)


def open_weights(weights, name, builder):
    """A weight source for `weights` ("imagenet" or a file path) and backbone `name`."""
    if weights == "imagenet":
        return _imagenet(name, builder)
    path = pathlib.Path(str(weights))
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone weight file {str(weights)!r} does not exist (weights= / {WEIGHTS_FLAG})"
        )
    if path.name.endswith(".safetensors"):
        return TimmSource(path, name, builder)
    if path.name.endswith(".h5"):
        return KerasAppSource(path, name, builder)
    raise ValueError(
        f"Backbone weight file {str(path)!r}: expected a keras.applications '.h5' / "
        f"'.weights.h5' file or a timm '.safetensors' file"
    )
