"""Checks of elaboration parameters, shared by the components so their errors read the same."""

__all__ = ["check_int"]


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int (not a bool) in ``lo..hi``.

    Raises
    ------
    TypeError
        If ``value`` is not an int.
    ValueError
        If ``value`` is outside ``lo..hi``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {lo}..{hi}, not {value!r}")
    return value
