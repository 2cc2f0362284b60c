"""Progress bars for the long steps (evaluation, prediction, conversion, export)."""


def progress_bar(iterable=None, *, total=None, desc=None, unit=" images", enabled=True,
                 initial=0):
    """A tqdm bar with the rate (`unit`/s) and, when `total` is known, the ETA.

    It is shown on a terminal only: off when `enabled` is False or stderr is not a TTY
    (logs and pipes get no control characters)."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                initial=initial, disable=None if enabled else True)
