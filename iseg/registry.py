"""A name -> builder registry used for backbones, heads, models and datasets."""


class Registry:
    """Maps names to builder callables; unknown names raise an error listing the valid ones."""

    def __init__(self, kind):
        self.kind = kind
        self._builders = {}

    def register(self, name=None):
        """Decorator: `@REGISTRY.register("name")` (defaults to the function's name)."""

        def wrap(fn):
            key = name or fn.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._builders[key] = fn
            return fn

        return wrap

    def get(self, name):
        try:
            return self._builders[name]
        except KeyError:
            raise ValueError(
                f"Unknown {self.kind} {name!r}. Valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self):
        return sorted(self._builders)

    def __contains__(self, name):
        return name in self._builders
