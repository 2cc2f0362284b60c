"""The registry of semi-supervised methods: `--semi=<name>`.

Each entry names the module and class of one method (imported only when chosen), so
listing the names costs nothing.
"""

import importlib

from iseg.errors import ConfigError

_METHODS = {  # name -> "module:class"; one line per method
    "unimatch": "iseg.semi.methods.unimatch:UniMatch",
    "augseg": "iseg.semi.methods.augseg:AugSeg",
    "cps": "iseg.semi.methods.cps:CPS",
    "imas": "iseg.semi.methods.imas:IMAS",
    "corrmatch": "iseg.semi.methods.corrmatch:CorrMatch",
    "cwbass": "iseg.semi.methods.cwbass:CWBASS",
}


def names():
    """The registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name):
    """The `SemiMethod` subclass registered as `name`; ConfigError listing the valid ones."""
    if name not in _METHODS:
        raise ConfigError(f"--semi={name}: unknown method. Valid methods: "
                          f"{', '.join(['none', *names()])}")
    module, cls = _METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name, options=None):
    """An instance of method `name` with `options` (a dict, `--semi_options`)."""
    return method_class(name)(options)


def weights_source(name):
    """Which weights of a `--semi=name` checkpoint are the trained model: "teacher" for
    methods with an EMA teacher (training evaluates and exports it), else "model"."""
    if name in (None, "none"):
        return "model"
    return "teacher" if method_class(name).teacher == "ema" else "model"
