"""A numba scanner for ImageNet-AB XML: many documents in one pass, no Python per element.

ElementTree builds a Python object per element (a trace of 100 samples is 400 of them); the
files are machine-written (a dict dumped to XML, optionally after an ILSVRC box XML), so one
byte-level pass that checks the tag nesting and pulls out exactly the fields we keep is
both stricter and an order of magnitude faster. Output is flat arrays (one row per document,
annotation, trace sample, click and box) that the reader turns into Arrow columns.
"""

from __future__ import annotations

import numba
import numpy as np

from luab_data.sources import validation as v
from luab_data.sources.numparse import is_space, parse_float, parse_int, strip

# Tag names we act on; any other tag is checked for nesting and otherwise ignored.
TAGS = (
    "annotation metadata mouseTracking selectedRecord size object bndbox "
    "time x y worker_id hit_id imageID estimateTime hit_submit_time hoveredCount page_idx "
    "selected originalImageWidth originalImageHeight width height name xmin ymin xmax ymax"
).split()
T = {name: i + 1 for i, name in enumerate(TAGS)}  # 0 = a tag we ignore

# Per-annotation string spans and integer fields (column order of the output arrays).
ANN_STR = ("worker_id", "hit_id", "imageID")
ANN_INT = (
    "estimateTime",
    "hit_submit_time",
    "hoveredCount",
    "page_idx",
    "originalImageWidth",
    "originalImageHeight",
)
MISSING = np.iinfo(np.int64).min
# Integer leaves: the record column each one fills, whose Arrow type bounds it, and the least
# sensible value (no negative durations, counts, pages or sizes; a size of 0 is zero-size).
INT_LEAVES = {
    "estimateTime": ("ann_duration_ms", 0),
    "hit_submit_time": ("ann_submit_s", 0),
    "hoveredCount": ("ann_hover_count", 0),
    "page_idx": ("ann_page", 0),
    "originalImageWidth": ("width", 0),
    "originalImageHeight": ("height", 0),
    "width": ("width", 0),  # <size> of the ILSVRC box part
    "height": ("height", 0),
}

# Error codes (index into ERRORS) with the reject reason each maps to.
ERRORS = (
    ("", ""),
    (v.MALFORMED_XML, "closing tag does not match the open element"),
    (v.MALFORMED_XML, "document ends inside a tag or element"),
    (v.MALFORMED_XML, "content after the root element"),
    (v.MALFORMED_XML, "elements nested too deep"),
    (v.MALFORMED_XML, "no root element"),
    (v.BAD_FIELD, "number expected"),
    (v.BAD_FIELD, "True or False expected"),
    (v.BAD_FIELD, "trace sample or click lacks time, x or y"),
    (v.BAD_FIELD, "no <metadata> block"),
    (v.BAD_FIELD, "<metadata> lacks selected or originalImageWidth/Height"),
    (v.ZERO_SIZE, "originalImageWidth or originalImageHeight is 0 (image never loaded)"),
    (v.BAD_COORDINATES, "coordinate is not finite or far outside the image"),
    (v.BAD_TIMES, "time is not epoch milliseconds between 2000 and 2100"),
    (v.BAD_TIMES, "times go backwards within one annotation"),
    (v.BAD_FIELD, "value out of range"),
    (v.MALFORMED_XML, "the root element is not <annotation>"),
    (v.MALFORMED_XML, "NUL byte (not allowed in XML)"),
    (
        v.MALFORMED_XML,
        "entity reference other than &lt; &gt; &amp; &quot; &apos; or &#...; "
        "(DTD entities are never expanded)",
    ),
    (v.MALFORMED_XML, "DOCTYPE, ENTITY or CDATA section (the release has none; not processed)"),
    (v.BAD_FIELD, "more <metadata> blocks than the int16 annotation index holds"),
    (v.BAD_COORDINATES, "box corner missing, not finite or far outside the image"),
)
(
    E_OK,
    E_MISMATCH,
    E_EOF,
    E_TRAILING,
    E_DEPTH,
    E_NOROOT,
    E_NUMBER,
    E_BOOL,
    E_INCOMPLETE,
    E_NOMETA,
    E_METAFIELD,
    E_ZERO,
    E_COORD,
    E_TIME,
    E_ORDER,
    E_RANGE,
    E_ROOT,
    E_NUL,
    E_ENTITY,
    E_DTD,
    E_MANY,
    E_BOX,
) = range(len(ERRORS))
# Errors found at a leaf's text: the reject names the leaf (see field_at).
LEAF_ERRORS = (E_NUMBER, E_BOOL, E_RANGE)

_MAX_DEPTH = 32
# Byte classes, one table lookup per byte on the hot loops instead of a chain of compares.
_ENDS_NAME, _ENDS_TEXT = 1, 2
_CLASS = np.zeros(256, np.uint8)
_CLASS[[ord(">"), ord("/"), 0, 32, 9, 10, 13]] |= _ENDS_NAME
_CLASS[[ord("<"), ord("&"), 0]] |= _ENDS_TEXT
_LONGEST_TAG = max(len(t) for t in TAGS)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _fnv1a(name: str) -> np.uint64:
    h = int(_FNV_OFFSET)
    for b in name.encode():
        h = ((h ^ b) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


_ORDER = np.argsort(np.array([_fnv1a(n) for n in TAGS], np.uint64))
TAG_HASHES = np.array([_fnv1a(n) for n in TAGS], np.uint64)[_ORDER]
TAG_IDS = (np.arange(1, len(TAGS) + 1, dtype=np.int32))[_ORDER]


@numba.njit(cache=True, nogil=True, inline="always")
def _name_end(buf, i, end):
    while i < end:
        if _CLASS[buf[i]] & _ENDS_NAME:  # '>' '/' NUL whitespace
            return i
        i += 1
    return end


@numba.njit(cache=True, nogil=True, inline="always")
def _tag_end(buf, ns, end):
    """(end of the tag name starting at ns, index of the tag's closing '>' or `end`)."""
    ne = _name_end(buf, ns, end)
    gt = ne
    while gt < end and buf[gt] != 62:
        gt += 1
    return ne, gt


@numba.njit(cache=True, nogil=True)
def _nul_at(buf, s, e):
    """Index of the first NUL in buf[s:e], or -1 (for the rare tag with attributes)."""
    for i in range(s, e):
        if buf[i] == 0:
            return i
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(buf, s, e):
    h = _FNV_OFFSET
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True, inline="always")
def _same_name(buf, packed, s, e):
    """Does buf[s:e] equal the open tag's name (packed as start << 16 | length)?"""
    start, length = packed >> 16, packed & 0xFFFF
    if e - s != length:
        return False
    for k in range(length):
        if buf[s + k] != buf[start + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _tag_id(h, hashes, ids):
    k = np.searchsorted(hashes, h)
    if k < hashes.shape[0] and hashes[k] == h:
        return ids[k]
    return 0


@numba.njit(cache=True, nogil=True)
def _skip_special(buf, i, end):
    """Skip <?...?> or <!--...--> starting at buf[i] == '<'; return the index after it, -1 if
    the document ends first, -2 for any other <!...> (DOCTYPE, ENTITY, CDATA), -3 for a NUL."""
    if buf[i + 1] == 63:  # '?'
        j = i + 2
        while j + 1 < end and not (buf[j] == 63 and buf[j + 1] == 62):
            if buf[j] == 0:
                return -3
            j += 1
        return j + 2 if j + 1 < end else -1
    if i + 3 < end and buf[i + 2] == 45 and buf[i + 3] == 45:  # '<!--'
        j = i + 4
        while j + 2 < end and not (buf[j] == 45 and buf[j + 1] == 45 and buf[j + 2] == 62):
            if buf[j] == 0:
                return -3
            j += 1
        return j + 3 if j + 2 < end else -1
    return -2


@numba.njit(cache=True, nogil=True, inline="always")
def _word_at(buf, i, end, word):
    if i + len(word) > end:
        return False
    for k in range(len(word)):
        if buf[i + k] != word[k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _entity_ok(buf, i, end):
    """Is buf[i:] (after an '&') a predefined entity or a character reference up to ';'?"""
    for word in (_LT, _GT, _AMP, _QUOT, _APOS):
        if _word_at(buf, i, end, word):
            return True
    if i >= end or buf[i] != 35:  # '#'
        return False
    hexa = i + 1 < end and buf[i + 1] == 120  # 'x'
    j = i + 2 if hexa else i + 1
    first = j
    while j < end:
        c = buf[j]
        digit = 48 <= c <= 57 or (hexa and (97 <= c <= 102 or 65 <= c <= 70))
        if not digit:
            return c == 59 and j > first  # ';' after at least one digit
        j += 1
    return False


_LT = np.frombuffer(b"lt;", np.uint8)
_GT = np.frombuffer(b"gt;", np.uint8)
_AMP = np.frombuffer(b"amp;", np.uint8)
_QUOT = np.frombuffer(b"quot;", np.uint8)
_APOS = np.frombuffer(b"apos;", np.uint8)


class ScanResult:
    """Flat arrays of one scanned chunk (see scan_chunk)."""

    def __init__(self, arrays: tuple):
        (
            self.doc_err,
            self.doc_errpos,
            self.doc_ann_end,
            self.doc_smp_end,
            self.doc_clk_end,
            self.doc_obj_end,
            self.ann_str,
            self.ann_int,
            self.ann_sel,
            self.smp_ann,
            self.smp_t,
            self.smp_x,
            self.smp_y,
            self.clk_ann,
            self.clk_t,
            self.clk_x,
            self.clk_y,
            self.obj_name,
            self.obj_box,
            self.doc_size,
        ) = arrays


def _leaf_bounds() -> np.ndarray:
    """(low, high) per tag id: value_range of the column each integer leaf fills."""
    bounds = np.zeros((len(TAGS) + 1, 2), np.int64)
    bounds[:, 0], bounds[:, 1] = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    for name, (column, minimum) in INT_LEAVES.items():
        bounds[T[name]] = v.value_range(column, minimum)
    return bounds


def leaf_range_detail(name: str, text: str) -> str:
    """The bad-field detail of an integer leaf outside its range."""
    column, minimum = INT_LEAVES.get(name, ("ann_submit_s", None))
    return v.range_detail(name, text, column, minimum)


def scan_chunk(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> ScanResult:
    """Scan documents buf[starts[i]:ends[i]]; see the module docstring."""
    n_bytes = max(int((ends - starts).sum()), 1)
    n_docs = len(starts)
    # Upper bounds from the smallest possible element of each kind.
    cap_ann = n_bytes // 20 + 1
    cap_smp = n_bytes // 55 + 1
    cap_obj = n_bytes // 17 + 1
    return ScanResult(
        _scan(
            buf,
            starts,
            ends,
            n_docs,
            cap_ann,
            cap_smp,
            cap_obj,
            TAG_HASHES,
            TAG_IDS,
            LEAF_BOUNDS,
            MAX_ANNOTATIONS,
        )
    )


@numba.njit(cache=True, nogil=True)
def _scan(buf, starts, ends, n_docs, cap_ann, cap_smp, cap_obj, hashes, ids, bounds, max_ann):
    doc_err = np.zeros(n_docs, np.int32)
    doc_errpos = np.zeros(n_docs, np.int64)
    doc_ann_end = np.zeros(n_docs, np.int64)
    doc_smp_end = np.zeros(n_docs, np.int64)
    doc_clk_end = np.zeros(n_docs, np.int64)
    doc_obj_end = np.zeros(n_docs, np.int64)
    doc_size = np.full((n_docs, 2), -1, np.int64)
    # np.empty: rows are initialised when their element opens; capacity is never touched.
    ann_str = np.empty((cap_ann, 3, 2), np.int64)
    ann_int = np.empty((cap_ann, 6), np.int64)
    ann_sel = np.empty(cap_ann, np.int8)
    smp_ann = np.empty(cap_smp, np.int64)
    smp_t = np.empty(cap_smp, np.int64)
    smp_x = np.empty(cap_smp, np.float64)
    smp_y = np.empty(cap_smp, np.float64)
    smp_pos = np.empty(cap_smp, np.int64)
    clk_ann = np.empty(cap_smp, np.int64)
    clk_t = np.empty(cap_smp, np.int64)
    clk_x = np.empty(cap_smp, np.float64)
    clk_y = np.empty(cap_smp, np.float64)
    clk_pos = np.empty(cap_smp, np.int64)
    obj_name = np.empty((cap_obj, 2), np.int64)
    obj_box = np.empty((cap_obj, 4), np.float64)
    obj_pos = np.empty(cap_obj, np.int64)
    state = np.zeros(4, np.int64)  # cursors: annotations, samples, clicks, objects
    stacks = (
        np.zeros(_MAX_DEPTH, np.int64),  # start << 16 | length of each open tag's name
        np.zeros(_MAX_DEPTH, np.int32),  # its id in TAGS (0: ignored)
        np.zeros(_MAX_DEPTH, np.bool_),  # whether it has child elements
        np.zeros(_MAX_DEPTH, np.int64),  # where its text starts
    )
    for d in range(n_docs):
        saved = state.copy()
        err, pos = _scan_doc(
            buf,
            starts[d],
            ends[d],
            hashes,
            ids,
            bounds,
            stacks,
            state,
            doc_size[d],
            ann_str,
            ann_int,
            ann_sel,
            smp_ann,
            smp_t,
            smp_x,
            smp_y,
            smp_pos,
            clk_ann,
            clk_t,
            clk_x,
            clk_y,
            clk_pos,
            obj_name,
            obj_box,
            obj_pos,
        )
        if err == E_OK:
            err, pos = _validate(
                saved,
                state,
                max_ann,
                doc_size[d],
                ann_int,
                ann_sel,
                smp_ann,
                smp_t,
                smp_x,
                smp_y,
                smp_pos,
                clk_ann,
                clk_t,
                clk_x,
                clk_y,
                clk_pos,
                obj_box,
                obj_pos,
            )
            pos = pos - starts[d] if pos > 0 else 0
        if err != E_OK:
            state[:] = saved  # drop what the bad document added
        doc_err[d] = err
        doc_errpos[d] = pos
        doc_ann_end[d] = state[0]
        doc_smp_end[d] = state[1]
        doc_clk_end[d] = state[2]
        doc_obj_end[d] = state[3]
    na, ns, nc, no = state[0], state[1], state[2], state[3]
    return (
        doc_err,
        doc_errpos,
        doc_ann_end,
        doc_smp_end,
        doc_clk_end,
        doc_obj_end,
        ann_str[:na],
        ann_int[:na],
        ann_sel[:na],
        smp_ann[:ns],
        smp_t[:ns],
        smp_x[:ns],
        smp_y[:ns],
        clk_ann[:nc],
        clk_t[:nc],
        clk_x[:nc],
        clk_y[:nc],
        obj_name[:no],
        obj_box[:no],
        doc_size,
    )


@numba.njit(cache=True, nogil=True)
def _scan_doc(
    buf,
    start,
    end,
    hashes,
    ids,
    bounds,
    stacks,
    state,
    size,
    ann_str,
    ann_int,
    ann_sel,
    smp_ann,
    smp_t,
    smp_x,
    smp_y,
    smp_pos,
    clk_ann,
    clk_t,
    clk_x,
    clk_y,
    clk_pos,
    obj_name,
    obj_box,
    obj_pos,
):
    """Scan one document; returns (error code, byte offset of the error within the doc)."""
    stack_h, stack_id, had_child, text_at = stacks
    depth = 0
    root_done = False
    ann = -1
    have = 0  # bit mask of time/x/y seen inside the open sample or click
    cur_t = 0
    cur_x = 0.0
    cur_y = 0.0
    item_at = 0
    i = start
    while True:
        if root_done:  # only whitespace may follow the root element
            while i < end and is_space(buf[i]):
                i += 1
            if i < end:
                return E_TRAILING, i - start
            break
        while i < end:  # text up to the next '<'
            c = buf[i]
            if _CLASS[c] & _ENDS_TEXT:
                if c == 60:
                    break
                if c == 0:  # NUL; '&' (entities: only XML's own, never expanded)
                    return E_NUL, i - start
                if not _entity_ok(buf, i + 1, end):
                    return E_ENTITY, i - start
            i += 1
        if i >= end:
            break
        if i + 1 >= end:
            return E_EOF, i - start
        c1 = buf[i + 1]
        if c1 == 63 or c1 == 33:  # '?' or '!'
            j = _skip_special(buf, i, end)
            if j == -2:
                return E_DTD, i - start
            if j == -3:
                return E_NUL, i - start
            if j < 0:
                return E_EOF, end - start
            i = j
            continue
        if c1 == 47:  # closing tag
            ns = i + 2
            ne, gt = _tag_end(buf, ns, end)
            if gt > ne and _nul_at(buf, ne, gt) >= 0:  # a name ends at a NUL, or attributes
                return E_NUL, _nul_at(buf, ne, gt) - start
            if gt >= end:
                return E_EOF, i - start
            if depth == 0 or not _same_name(buf, stack_h[depth - 1], ns, ne):
                return E_MISMATCH, i - start
            depth -= 1
            tag = stack_id[depth]
            parent = stack_id[depth - 1] if depth > 0 else 0
            if not had_child[depth] and tag != 0:
                ts = text_at[depth]
                if parent == T_MOUSE or parent == T_SELREC:
                    if tag == T_TIME:
                        cur_t, ok = parse_int(buf, ts, i)
                        have |= 1
                    elif tag == T_X:
                        cur_x, ok = parse_float(buf, ts, i)
                        have |= 2
                    elif tag == T_Y:
                        cur_y, ok = parse_float(buf, ts, i)
                        have |= 4
                    else:
                        ok = True
                    if not ok:
                        return E_NUMBER, ts - start
                elif parent == T_META and ann >= 0:
                    err = _meta_field(buf, tag, ts, i, ann, bounds, ann_str, ann_int, ann_sel)
                    if err != E_OK:
                        return err, ts - start
                elif parent == T_SIZE and (tag == T_WIDTH or tag == T_HEIGHT):
                    val, ok = parse_int(buf, ts, i)
                    if not ok:
                        return E_NUMBER, ts - start
                    if val < bounds[tag, 0] or val > bounds[tag, 1]:
                        return E_RANGE, ts - start
                    size[0 if tag == T_WIDTH else 1] = val
                elif parent == T_OBJECT and tag == T_NAME and state[3] > 0:
                    s0, e0 = strip(buf, ts, i)
                    obj_name[state[3] - 1, 0] = s0
                    obj_name[state[3] - 1, 1] = e0
                elif parent == T_BNDBOX and tag >= T_XMIN and state[3] > 0:
                    val, ok = parse_float(buf, ts, i)
                    if not ok:
                        return E_NUMBER, ts - start
                    obj_box[state[3] - 1, tag - T_XMIN] = val
            if (tag == T_MOUSE or tag == T_SELREC) and ann >= 0 and had_child[depth]:
                if have != 7:
                    return E_INCOMPLETE, item_at - start
                k = 1 if tag == T_MOUSE else 2
                j = state[k]
                if tag == T_MOUSE:
                    smp_ann[j], smp_t[j], smp_x[j], smp_y[j], smp_pos[j] = (
                        ann,
                        cur_t,
                        cur_x,
                        cur_y,
                        item_at,
                    )
                else:
                    clk_ann[j], clk_t[j], clk_x[j], clk_y[j], clk_pos[j] = (
                        ann,
                        cur_t,
                        cur_x,
                        cur_y,
                        item_at,
                    )
                state[k] = j + 1
            if tag == T_META:
                ann = -1
            if depth == 0:
                root_done = True
            i = gt + 1
            continue
        # opening tag
        ns = i + 1
        ne, gt = _tag_end(buf, ns, end)
        if gt > ne and _nul_at(buf, ne, gt) >= 0:
            return E_NUL, _nul_at(buf, ne, gt) - start
        if gt >= end:
            return E_EOF, i - start
        if depth >= _MAX_DEPTH:
            return E_DEPTH, i - start
        tag = _tag_id(_hash(buf, ns, ne), hashes, ids) if ne - ns <= _LONGEST_TAG else 0
        if depth == 0 and tag != T_ANNOTATION:
            return E_ROOT, i - start
        if depth > 0:
            had_child[depth - 1] = True
        if tag == T_META and depth == 1:
            ann = state[0]
            state[0] = ann + 1
            ann_int[ann, :] = MISSING
            ann_sel[ann] = -1
            ann_str[ann, :, :] = 0
        elif tag == T_MOUSE or tag == T_SELREC:
            have = 0
            item_at = i
        elif tag == T_OBJECT:
            obj_name[state[3], :] = 0
            obj_box[state[3], :] = np.nan
            obj_pos[state[3]] = i
            state[3] += 1
        elif tag == T_BNDBOX and state[3] > 0:
            obj_pos[state[3] - 1] = i  # box errors quote the corners
        self_closing = buf[gt - 1] == 47
        if not self_closing:
            stack_h[depth] = ns << 16 | (ne - ns)  # where the name is, to match the close
            stack_id[depth] = tag
            had_child[depth] = False
            text_at[depth] = gt + 1
            depth += 1
        elif depth == 0:
            root_done = True
        i = gt + 1
    if depth != 0:
        return E_EOF, end - start
    if not root_done:
        return E_NOROOT, 0
    return E_OK, 0


@numba.njit(cache=True, nogil=True, inline="always")
def _meta_field(buf, tag, ts, te, ann, bounds, ann_str, ann_int, ann_sel):
    """Store one leaf of a <metadata> block."""
    if tag == T_WORKER or tag == T_HIT or tag == T_IMAGEID:
        s0, e0 = strip(buf, ts, te)
        col = 0 if tag == T_WORKER else (1 if tag == T_HIT else 2)
        ann_str[ann, col, 0] = s0
        ann_str[ann, col, 1] = e0
    elif tag == T_SELECTED:
        s0, e0 = strip(buf, ts, te)
        if e0 - s0 == 4 and buf[s0] == 84:  # 'True': compare the text, bool("False") is true
            ann_sel[ann] = 1
        elif e0 - s0 == 5 and buf[s0] == 70:  # 'False'
            ann_sel[ann] = 0
        else:
            return E_BOOL
    elif tag >= T_ESTIMATE and tag <= T_ORIG_H and tag != T_SELECTED:
        val, ok = parse_int(buf, ts, te)
        if not ok:
            return E_NUMBER
        if val < bounds[tag, 0] or val > bounds[tag, 1]:
            return E_RANGE
        col = _INT_COL[tag]
        if col >= 0:
            ann_int[ann, col] = val
    return E_OK


@numba.njit(cache=True, nogil=True)
def _validate(
    saved,
    state,
    max_ann,
    size,
    ann_int,
    ann_sel,
    smp_ann,
    smp_t,
    smp_x,
    smp_y,
    smp_pos,
    clk_ann,
    clk_t,
    clk_x,
    clk_y,
    clk_pos,
    obj_box,
    obj_pos,
):
    """Per-document checks after a clean scan; returns (error, absolute byte position)."""
    if state[0] == saved[0]:
        return E_NOMETA, 0
    if state[0] - saved[0] > max_ann:
        return E_MANY, 0
    for a in range(saved[0], state[0]):
        if ann_sel[a] < 0 or ann_int[a, 4] == MISSING or ann_int[a, 5] == MISSING:
            return E_METAFIELD, 0
        if ann_int[a, 4] <= 0 or ann_int[a, 5] <= 0:
            return E_ZERO, 0
    err, pos = _check_series(saved[1], state[1], smp_ann, smp_t, smp_x, smp_y, smp_pos)
    if err != E_OK:
        return err, pos
    err, pos = _check_series(saved[2], state[2], clk_ann, clk_t, clk_x, clk_y, clk_pos)
    if err != E_OK:
        return err, pos
    # boxes are normalised by the <size> block, else by the original size (as the reader does)
    w = size[0] if size[0] > 0 else ann_int[saved[0], 4]
    h = size[1] if size[1] > 0 else ann_int[saved[0], 5]
    for o in range(saved[3], state[3]):
        for k in range(4):
            c = obj_box[o, k] / (w if k % 2 == 0 else h)
            if not (v.COORD_MIN <= c <= v.COORD_MAX):
                return E_BOX, obj_pos[o]
    return E_OK, 0


@numba.njit(cache=True, nogil=True, inline="always")
def _check_series(s, e, owner, t, x, y, pos):
    for j in range(s, e):
        if not (v.COORD_MIN <= x[j] <= v.COORD_MAX and v.COORD_MIN <= y[j] <= v.COORD_MAX):
            return E_COORD, pos[j]
        if t[j] < v.EPOCH_MS_MIN or t[j] > v.EPOCH_MS_MAX:
            return E_TIME, pos[j]
        if j > s and owner[j] == owner[j - 1] and t[j] < t[j - 1]:
            return E_ORDER, pos[j]
    return E_OK, 0


T_ANNOTATION = T["annotation"]
T_MOUSE = T["mouseTracking"]
T_SELREC = T["selectedRecord"]
T_META = T["metadata"]
T_SIZE = T["size"]
T_OBJECT = T["object"]
T_BNDBOX = T["bndbox"]
T_TIME, T_X, T_Y = T["time"], T["x"], T["y"]
T_WORKER, T_HIT, T_IMAGEID = T["worker_id"], T["hit_id"], T["imageID"]
T_ESTIMATE, T_SELECTED = T["estimateTime"], T["selected"]
T_ORIG_H = T["originalImageHeight"]
T_WIDTH, T_HEIGHT, T_NAME, T_XMIN = T["width"], T["height"], T["name"], T["xmin"]
_INT_COL = np.full(len(TAGS) + 1, -1, np.int64)
for _col, _name in enumerate(ANN_INT):
    _INT_COL[T[_name]] = _col
LEAF_BOUNDS = _leaf_bounds()
MAX_ANNOTATIONS = v.value_range("trace_ann")[1]  # annotation index within a record: int16


def field_at(doc: bytes, at: int, err: int) -> str:
    """The field an error names: the leaf whose text starts at `at` (number, range and bool
    errors), else the element that starts there ('' if none)."""
    lt = doc.rfind(b"<", max(0, at - 64), at)
    if err in LEAF_ERRORS:
        tag = doc[lt + 1 : at] if lt >= 0 else b""
    else:
        tag = doc[at + 1 : at + 64].split(b">", 1)[0] if doc[at : at + 1] == b"<" else b""
    name = tag.rstrip(b">").split(maxsplit=1)
    return name[0].decode("utf-8", "replace") if name else ""
