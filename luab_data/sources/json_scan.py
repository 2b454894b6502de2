"""A numba scanner for the COCO-AB JSON list: elements parsed in place, no Python per value.

json.loads builds a dict per trace sample; a COCO-AB record carries ~80 of them, and the C
decoder alone tops out near 13,000 records/s here. This scanner walks the bytes once, checks
the JSON syntax of every element (a broken element is reported and skipped, the list read on)
and pulls out the fields we keep into flat arrays: one row per element, trace sample and icon
action. Field types are checked here; values (sizes, coordinates, times, class names) by the
reader. A buffer may end inside an element: the scan stops before it and asks for more.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from luab_data.sources import validation as v
from luab_data.sources.numparse import is_space, parse_float, parse_int
from luab_data.sources.xml_scan import _fnv1a, _hash, _tag_id

KEYS = (
    "image_id worker_id hit_id page_id originalImageWidth originalImageHeight timeSpent "
    "actionHistories mouseTracking timeAt x y actionType iconType pointTo"
).split()
K = {name: i + 1 for i, name in enumerate(KEYS)}
_ORDER = np.argsort(np.array([_fnv1a(n) for n in KEYS], np.uint64))
KEY_HASHES = np.array([_fnv1a(n) for n in KEYS], np.uint64)[_ORDER]
KEY_IDS = np.arange(1, len(KEYS) + 1, dtype=np.int32)[_ORDER]
TOP_KEY_MAX = K["mouseTracking"]  # ids 1..9 are top-level keys (for resynchronising)
# Integer fields: the record column (or type) each one fills, and the least sensible value
# (image ids, pages, durations and sizes are never negative; a size of 0 is zero-size).
INT_RANGES = {
    "image_id": (pa.int64(), 0),  # becomes the key and the image file name
    "page_id": ("ann_page", 0),
    "originalImageWidth": ("width", 0),
    "originalImageHeight": ("height", 0),
    "timeSpent": ("ann_duration_ms", 0),
}
INT_FIELDS = tuple(INT_RANGES)
INT_BOUNDS = v.range_table(INT_RANGES)  # (low, high) per INT_FIELDS column
MISSING = np.iinfo(np.int64).min

# status of one element
OK, NEED_MORE, SYNTAX, TYPE = 0, 1, 2, 3
# what went wrong (index into WHAT)
WHAT = (
    "",
    "invalid JSON",
    "element is not a JSON object",
    "mouseTracking must be a list of {timeAt, x, y} objects with numbers",
    "actionHistories must be a list of action objects",
    "pointTo must be {x, y} with numbers, or null",
    "timeAt must be a number",
    "image_id, page_id, originalImageWidth/Height and timeSpent must be integers",
    "value out of range",
)
W_SYNTAX, W_NOTOBJ, W_TRACE, W_ACTIONS, W_POINT, W_TIME, W_INT, W_RANGE = range(1, len(WHAT))
# list-level status (LIST_TRAILING_COMMA: the list ended with ',]', which JSON does not allow)
LIST_MORE, LIST_END, LIST_BAD, LIST_TRAILING_COMMA = 0, 1, 2, 3
# where a scan stands between elements (its `expect_comma`, handed to the next scan)
NO_ELEMENT_YET, AFTER_ELEMENT, AFTER_COMMA = 0, 1, 2

_OBJ, _ARR = 1, 2
_MAX_DEPTH = 64


@numba.njit(cache=True, nogil=True, inline="always")
def _ws(buf, i, end):
    while i < end and is_space(buf[i]):
        i += 1
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _string_end(buf, i, end):
    """buf[i] == '"': index after the closing quote; -1 if the buffer ends first, -2 if bad."""
    j = i + 1
    while j < end:
        c = buf[j]
        if c == 92:  # backslash escapes the next byte
            j += 2
            continue
        if c == 34:
            return j + 1
        if c < 32:
            return -2
        j += 1
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def _number_end(buf, i, end):
    j = i
    while j < end:
        c = buf[j]
        if not ((c >= 48 and c <= 57) or c == 45 or c == 43 or c == 46 or c == 101 or c == 69):
            return j
        j += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _literal_end(buf, i, end):
    """true / false / null (and NaN / Infinity / -Infinity, which Python's json writes)."""
    for word in (_TRUE, _FALSE, _NULL, _NAN, _INF):
        n = len(word)
        if i + n > end:
            if buf[i] == word[0]:
                return -1
            continue
        same = True
        for k in range(n):
            if buf[i + k] != word[k]:
                same = False
                break
        if same:
            return i + n
    return -2


_TRUE = np.frombuffer(b"true", np.uint8)
_FALSE = np.frombuffer(b"false", np.uint8)
_NULL = np.frombuffer(b"null", np.uint8)
_NAN = np.frombuffer(b"NaN", np.uint8)
_INF = np.frombuffer(b"Infinity", np.uint8)


class Scan:
    """Flat arrays of one scanned buffer (see scan_list)."""

    def __init__(self, arrays: tuple):
        (
            self.status, self.next_pos, self.expect_comma, self.el_start, self.el_end,
            self.el_err, self.el_what, self.el_errpos, self.el_int, self.el_str, self.el_tr_end,
            self.el_act_end, self.tr_t, self.tr_x, self.tr_y, self.act_kind, self.act_icon,
            self.act_t, self.act_xy,
        ) = arrays  # fmt: skip


def scan_list(buf: np.ndarray, pos: int, started: bool, expect_comma: int, eof: bool) -> Scan:
    """Scan the list elements in buf[pos:]. `started`: the opening '[' is behind us;
    `expect_comma`: NO_ELEMENT_YET (or False), AFTER_ELEMENT (or True) or AFTER_COMMA. Resume
    from `next_pos` with the scan's `expect_comma`."""
    n = max(len(buf) - pos, 1)
    return Scan(_scan_list(buf, pos, started, int(expect_comma), eof, n // 40 + 2, n // 20 + 2,
                           n // 40 + 2, KEY_HASHES, KEY_IDS, INT_BOUNDS))  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _scan_list(buf, pos, started, between, eof, cap_el, cap_tr, cap_act, hashes, ids, bounds):
    end = len(buf)
    el_start = np.empty(cap_el, np.int64)
    el_end = np.empty(cap_el, np.int64)
    el_err = np.empty(cap_el, np.int8)
    el_what = np.empty(cap_el, np.int8)
    el_errpos = np.empty(cap_el, np.int64)
    el_int = np.empty((cap_el, 5), np.int64)
    el_str = np.empty((cap_el, 2, 2), np.int64)
    el_tr_end = np.empty(cap_el, np.int64)
    el_act_end = np.empty(cap_el, np.int64)
    tr = np.empty((cap_tr, 3), np.float64)
    act_kind = np.empty((cap_act, 2), np.int64)
    act_icon = np.empty((cap_act, 2), np.int64)
    act_t = np.empty(cap_act, np.float64)
    act_xy = np.empty((cap_act, 2), np.float64)
    cur = np.zeros(3, np.int64)  # elements, trace rows, action rows
    stacks = (np.zeros(_MAX_DEPTH, np.int8), np.zeros(_MAX_DEPTH, np.int32),
              np.zeros(_MAX_DEPTH, np.int32))  # fmt: skip
    status = LIST_MORE
    i = pos
    if not started:
        i = _ws(buf, i, end)
        if i >= end:
            status = LIST_BAD if eof else LIST_MORE
        elif buf[i] != 91:  # '['
            status = LIST_BAD
        else:
            i += 1
            started = True
    while status == LIST_MORE and started:
        i = _ws(buf, i, end)
        if i >= end:
            break
        if buf[i] == 93:  # ']'
            status = LIST_TRAILING_COMMA if between == AFTER_COMMA else LIST_END
            i += 1
            break
        if between == AFTER_ELEMENT:
            if buf[i] != 44:  # ','
                status = LIST_BAD
                break
            between = AFTER_COMMA
            i += 1
            continue
        e = cur[0]
        saved = cur.copy()
        el_start[e] = i
        el_int[e, :] = MISSING
        el_str[e, :, :] = 0
        err, what, errpos, j = _element(
            buf, i, end, stacks, hashes, ids, bounds, e, cur, el_int, el_str, tr, act_kind,
            act_icon, act_t, act_xy,
        )  # fmt: skip
        if err == NEED_MORE:
            cur[:] = saved
            break
        if err == SYNTAX:
            cur[1:] = saved[1:]
            j = _resync(buf, errpos, end, hashes, ids)
            if j < 0 and eof:  # the broken element may be the last one: is ']' at the end?
                k = end - 1
                while k > errpos and is_space(buf[k]):
                    k -= 1
                j = k if buf[k] == 93 else -1
            if j < 0:  # the next element is not in the buffer yet (or the file is cut)
                cur[:] = saved
                status = LIST_BAD if eof else LIST_MORE
                break
        elif err != OK:
            cur[1:] = saved[1:]
        el_end[e] = j
        el_err[e] = err
        el_what[e] = what
        el_errpos[e] = errpos
        el_tr_end[e] = cur[1]
        el_act_end[e] = cur[2]
        cur[0] = e + 1
        between = AFTER_ELEMENT
        i = j
    ne, nt, na = cur[0], cur[1], cur[2]
    return (
        status, i, between, el_start[:ne], el_end[:ne], el_err[:ne], el_what[:ne], el_errpos[:ne],
        el_int[:ne], el_str[:ne], el_tr_end[:ne], el_act_end[:ne], tr[:nt, 0], tr[:nt, 1],
        tr[:nt, 2], act_kind[:na], act_icon[:na], act_t[:na], act_xy[:na],
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _resync(buf, i, end, hashes, ids):
    """Index of the ',' before the next element that opens with a top-level key; -1 if none."""
    while i < end:
        if buf[i] == 44:
            j = _ws(buf, i + 1, end)
            if j < end and buf[j] == 123:
                j = _ws(buf, j + 1, end)
                if j < end and buf[j] == 34:
                    k = _string_end(buf, j, end)
                    if k > 0:
                        key = _tag_id(_hash(buf, j + 1, k - 1), hashes, ids)
                        if key >= 1 and key <= TOP_KEY_MAX:
                            return i
        i += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _element(
    buf, i, end, stacks, hashes, ids, bounds, e, cur, el_int, el_str, tr, act_kind, act_icon,
    act_t, act_xy,
):  # fmt: skip
    """Parse one list element; returns (status, what, error position, index after it)."""
    kind, ctx, key_at = stacks
    depth = 0
    expect = 0  # 0 value, 1 key or '}', 2 ':', 3 ',' or close, 4 value or ']', 5 key
    have = 0  # fields seen in the open trace sample / action
    type_err = 0
    type_at = 0
    start = i
    while True:
        i = _ws(buf, i, end)
        if i >= end:
            return NEED_MORE, 0, i, i
        c = buf[i]
        if expect == 2:
            if c != 58:
                return SYNTAX, W_SYNTAX, i, i
            expect = 0
            i += 1
            continue
        if expect == 3:
            if c == 44:
                expect = 5 if kind[depth - 1] == _OBJ else 0
                i += 1
                continue
            if not (
                (c == 125 and kind[depth - 1] == _OBJ) or (c == 93 and kind[depth - 1] == _ARR)
            ):
                return SYNTAX, W_SYNTAX, i, i
            c = 0  # handled below as a close
        if expect == 1 or expect == 5:
            if c == 125 and expect == 1:
                c = 0
            elif c != 34:
                return SYNTAX, W_SYNTAX, i, i
            else:
                j = _string_end(buf, i, end)
                if j == -1:
                    return NEED_MORE, 0, j, j
                if j < 0:
                    return SYNTAX, W_SYNTAX, i, i
                key_at[depth - 1] = _tag_id(_hash(buf, i + 1, j - 1), hashes, ids)
                expect = 2
                i = j
                continue
        if c == 0 or (expect == 4 and buf[i] == 93):  # close the innermost container
            depth -= 1
            if kind[depth] == _OBJ and depth == 2:
                err = _commit_item(ctx[depth], have, cur, tr, act_t)
                if err != 0 and type_err == 0:
                    type_err, type_at = err, i
            i += 1
            if depth == 0:
                break
            expect = 3
            continue
        # a value
        parent_obj = depth > 0 and kind[depth - 1] == _OBJ
        key = key_at[depth - 1] if parent_obj else (ctx[depth - 1] if depth > 0 else 0)
        if c == 123 or c == 91:  # '{' or '['
            if depth >= _MAX_DEPTH:
                return SYNTAX, W_SYNTAX, i, i
            kind[depth] = _OBJ if c == 123 else _ARR
            ctx[depth] = key
            key_at[depth] = 0
            err = _open(depth, c == 123, key, ctx, have)
            if err != 0 and type_err == 0:
                type_err, type_at = err, i
            if depth == 2 and c == 123:
                have = 0
                if ctx[1] == K_ACTIONS:
                    a = cur[2]
                    act_kind[a, :] = 0
                    act_icon[a, :] = 0
                    act_t[a] = np.nan
                    act_xy[a, :] = np.nan
            depth += 1
            expect = 1 if c == 123 else 4
            i += 1
            continue
        if c == 34:
            j = _string_end(buf, i, end)
        elif (c >= 48 and c <= 57) or c == 45:
            j = _number_end(buf, i, end)
            if j > 0 and buf[i] == 45 and j == i + 1:  # '-Infinity'
                j = _literal_end(buf, i + 1, end)
        else:
            j = _literal_end(buf, i, end)
        if j == -1:
            return NEED_MORE, 0, i, i
        if j < 0:
            return SYNTAX, W_SYNTAX, i, i
        if depth == 0:
            return TYPE, W_NOTOBJ, start, j  # a scalar element
        err, have = _scalar(buf, i, j, c, depth, key, ctx, have, bounds, e, cur, el_int, el_str,
                            tr, act_kind, act_icon, act_t, act_xy)  # fmt: skip
        if err != 0 and type_err == 0:
            type_err, type_at = err, i
        i = j
        expect = 3
    if kind[0] != _OBJ:
        return TYPE, W_NOTOBJ, start, i
    if type_err != 0:
        return TYPE, type_err, type_at, i
    return OK, 0, 0, i


@numba.njit(cache=True, nogil=True, inline="always")
def _open(depth, is_obj, key, ctx, have):
    """Type checks when a container opens at `depth` (0 = the element itself)."""
    if depth == 1 and (key == K_MOUSE or key == K_ACTIONS) and is_obj:
        return W_TRACE if key == K_MOUSE else W_ACTIONS
    if depth == 2 and not is_obj and (ctx[1] == K_MOUSE or ctx[1] == K_ACTIONS):
        return W_TRACE if ctx[1] == K_MOUSE else W_ACTIONS
    if depth == 3 and ctx[1] == K_ACTIONS and key == K_POINTTO and not is_obj:
        return W_POINT
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _commit_item(array_key, have, cur, tr, act_t):
    """A trace sample or an action object closed: keep it if complete."""
    if array_key == K_MOUSE:
        if have & 7 != 7:
            return W_TRACE
        cur[1] += 1
    elif array_key == K_ACTIONS:
        cur[2] += 1
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _number(buf, i, j, c):
    if not ((c >= 48 and c <= 57) or c == 45 or c == 78 or c == 73):
        return np.nan, False
    return parse_float(buf, i, j)


@numba.njit(cache=True, nogil=True, inline="always")
def _scalar(
    buf, i, j, c, depth, key, ctx, have, bounds, e, cur, el_int, el_str, tr, act_kind, act_icon,
    act_t, act_xy,
):  # fmt: skip
    """Store one scalar value found under `key` at `depth`; returns (type error, have)."""
    if depth == 1:
        col = _INT_COL[key]
        if col >= 0:
            val, ok = parse_int(buf, i, j)
            if not ok:
                return W_INT, have
            el_int[e, col] = val  # kept even when out of range: the key names the reject
            if val < bounds[col, 0] or val > bounds[col, 1]:
                return W_RANGE, have
        elif key == K_WORKER or key == K_HIT:
            el_str[e, 0 if key == K_WORKER else 1, 0] = i + 1 if c == 34 else i
            el_str[e, 0 if key == K_WORKER else 1, 1] = j - 1 if c == 34 else j
        elif (key == K_MOUSE or key == K_ACTIONS) and c != 110:  # only null may stand for []
            return (W_TRACE if key == K_MOUSE else W_ACTIONS), have
        return 0, have
    if depth == 2 and (ctx[1] == K_MOUSE or ctx[1] == K_ACTIONS):
        return (W_TRACE if ctx[1] == K_MOUSE else W_ACTIONS), have
    if depth == 3 and ctx[1] == K_MOUSE:
        if key == K_TIME or key == K_X or key == K_Y:
            val, ok = _number(buf, i, j, c)
            if not ok:
                return W_TRACE, have
            col = 0 if key == K_TIME else (1 if key == K_X else 2)
            tr[cur[1], col] = val
            have |= 1 << col
        return 0, have
    if depth == 3 and ctx[1] == K_ACTIONS:
        a = cur[2]
        if key == K_ATYPE or key == K_ICON:
            dest = act_kind if key == K_ATYPE else act_icon
            dest[a, 0] = i + 1 if c == 34 else i
            dest[a, 1] = j - 1 if c == 34 else j
        elif key == K_TIME:
            val, ok = _number(buf, i, j, c)
            if not ok:
                return W_TIME, have
            act_t[a] = val
        elif key == K_POINTTO and c != 110:
            return W_POINT, have
        return 0, have
    if depth == 4 and ctx[1] == K_ACTIONS and ctx[3] == K_POINTTO:
        if key == K_X or key == K_Y:
            val, ok = _number(buf, i, j, c)
            if not ok:
                return W_POINT, have
            act_xy[cur[2], 0 if key == K_X else 1] = val
    return 0, have


K_WORKER, K_HIT = K["worker_id"], K["hit_id"]
K_ACTIONS, K_MOUSE = K["actionHistories"], K["mouseTracking"]
K_TIME, K_X, K_Y = K["timeAt"], K["x"], K["y"]
K_ATYPE, K_ICON, K_POINTTO = K["actionType"], K["iconType"], K["pointTo"]
_INT_COL = np.full(len(KEYS) + 1, -1, np.int64)
for _col, _name in enumerate(INT_FIELDS):
    _INT_COL[K[_name]] = _col
