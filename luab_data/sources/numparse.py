"""Numbers and whitespace in byte buffers, for the numba scanners of the release formats."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def is_space(c: int) -> bool:
    return c == 32 or c == 9 or c == 10 or c == 13


@numba.njit(cache=True, nogil=True, inline="always")
def strip(buf, s, e):
    while s < e and is_space(buf[s]):
        s += 1
    while e > s and is_space(buf[e - 1]):
        e -= 1
    return s, e


@numba.njit(cache=True, nogil=True, inline="always")
def parse_int(buf, s, e):
    """Decimal integer in buf[s:e]; ok=False when it is not one."""
    s, e = strip(buf, s, e)
    neg = s < e and buf[s] == 45
    if s < e and (buf[s] == 45 or buf[s] == 43):
        s += 1
    if s >= e or e - s > 18:
        return 0, False
    val = 0
    for i in range(s, e):
        d = buf[i] - 48
        if d < 0 or d > 9:
            return 0, False
        val = val * 10 + d
    return (-val if neg else val), True


@numba.njit(cache=True, nogil=True, inline="always")
def _match_word(buf, s, e, word):
    if e - s != len(word):
        return False
    for i in range(e - s):
        c = buf[s + i]
        if c >= 65 and c <= 90:
            c += 32  # case-insensitive: NaN, nan, Infinity
        if c != word[i]:
            return False
    return True


_NAN = np.frombuffer(b"nan", np.uint8)
_INF = np.frombuffer(b"inf", np.uint8)
_INFINITY = np.frombuffer(b"infinity", np.uint8)


@numba.njit(cache=True, nogil=True, inline="always")
def parse_float(buf, s, e):
    """Decimal float in buf[s:e] (NaN and Infinity are parsed, the validator rejects them)."""
    s, e = strip(buf, s, e)
    neg = s < e and buf[s] == 45
    if s < e and (buf[s] == 45 or buf[s] == 43):
        s += 1
    if _match_word(buf, s, e, _NAN):
        return np.nan, True
    if _match_word(buf, s, e, _INF) or _match_word(buf, s, e, _INFINITY):
        return (-np.inf if neg else np.inf), True
    mant = 0
    digits = 0
    exp10 = 0
    i = s
    seen_dot = False
    while i < e:
        c = buf[i]
        if c >= 48 and c <= 57:
            if digits < 18:
                mant = mant * 10 + (c - 48)
                digits += mant > 0
                if seen_dot:
                    exp10 -= 1
            elif not seen_dot:
                exp10 += 1  # digits beyond int64 precision only scale the value
        elif c == 46 and not seen_dot:
            seen_dot = True
        else:
            break
        i += 1
    if i == s or (i == s + 1 and seen_dot):
        return 0.0, False
    if i < e:
        if buf[i] != 101 and buf[i] != 69:  # e / E
            return 0.0, False
        ev, ok = parse_int(buf, i + 1, e)
        if not ok:
            return 0.0, False
        exp10 += ev
    val = float(mant)
    if exp10 < 0:
        val = val / 10.0 ** (-exp10) if exp10 >= -22 else val * 10.0**exp10
    elif exp10 > 0:
        val = val * 10.0**exp10
    return (-val if neg else val), True
