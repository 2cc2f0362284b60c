"""Progress bars for the long steps (evaluation, prediction, conversion, export)."""

# the rate always as units per second ("0.52 images/s", not "1.92s/ images")
_PER_SECOND = {True: "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                     "{rate_noinv_fmt}{postfix}]",
               False: "{desc}: {n_fmt}{unit} [{elapsed}, {rate_noinv_fmt}{postfix}]"}


def progress_bar(iterable=None, *, total=None, desc=None, unit=" images", enabled=True,
                 initial=0, per_second=True):
    """A tqdm bar with the rate (`unit`/s, or s/`unit` without `per_second`) and, when
    `total` is known, the ETA.

    It is shown on a terminal only: off when `enabled` is False or stderr is not a TTY
    (logs and pipes get no control characters)."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    bar_format = _PER_SECOND[total is not None] if per_second else None
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                initial=initial, bar_format=bar_format, disable=None if enabled else True)
