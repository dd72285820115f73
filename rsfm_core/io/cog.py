"""Cloud-Optimized GeoTIFFs written while their rows arrive (issue 18: no finalize pass),
and a check of the COG layout.

:class:`StreamingCog` takes the token map's rows in order. Each level (the full
resolution and its overviews, 2 x 2 averages that skip nodata, as GDAL's ``average``)
keeps one block height of rows; a complete row of blocks is converted to the output
type, compressed (DEFLATE, zlib level 6 as GDAL's default) and appended to that level's
temporary file, and pairs of rows go down to the next level. :meth:`StreamingCog.close`
then lays out the file as GDAL's COG driver does and as :func:`validate_cog` checks:
header, GDAL's structural-metadata "ghost" area, the IFDs (full resolution first, then
the overviews, largest first), then the tile data, smallest overview first and the full
resolution last, tiles row-major in each level. What ``close`` does is a copy of bytes
already compressed (``copy_file_range``), not a pass over the pixels; int8 is the one
exception: its per-band scale/offset need the whole map's range, so its tiles are kept
as uncompressed float32 while streaming and quantised + compressed at ``close`` (one
read of the temporaries, no GDAL).

The geo tags (GeoKeys, tie point / pixel scale or transformation), ``GDAL_METADATA``
(dataset tags, band descriptions, scale/offset) and ``GDAL_NODATA`` are not written by
hand: rasterio writes them into a 1 x 1 GeoTIFF of the same CRS, transform, band count
and metadata, and their raw values are copied from there (:func:`gdal_tags`), so they are
GDAL's own encoding of the CRS.

Files are classic TIFF when they fit in 4 GiB, BigTIFF otherwise. Every byte is
determined by the inputs (edge tiles are padded with zeros), so runs repeat bytewise.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import remove_quietly, temp_path

INT8_NODATA = -128
BIGTIFF_AT = 2**32  # file size from which the COG is a BigTIFF (classic TIFF offsets: 32 bit)
_FORMATS = {  # output dtype -> (numpy type, BitsPerSample, SampleFormat)
    "float16": ("<f2", 16, 3),
    "float32": ("<f4", 32, 3),
    "int8": ("i1", 8, 2),
}
# TIFF field types: id -> (struct code, size)
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1),
          7: ("B", 1), 8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8),
          16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}  # fmt: skip
_COPIED = (33550, 33922, 34264, 34735, 34736, 34737, 42112)  # geo + GDAL_METADATA
_GDAL_NODATA = 42113
_GHOST = (  # GDAL's structural metadata: GDAL reads the file as LAYOUT=COG
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
_FRAME = 8  # each tile: its size as uint32 before it, its last 4 bytes again after it


def overview_levels(h: int, w: int, block: int) -> int:
    """GDAL's AUTO count (halve until one block holds the image), at least one level for
    maps of 16 px and more so that small maps have a preview too."""
    levels, side = 0, max(h, w)
    while side > block:
        side, levels = -(-side // 2), levels + 1
    return max(levels, 1) if max(h, w) >= 16 else levels


def cog_blocksize(h: int, w: int, blocksize: int) -> int:
    """The internal tile side: ``blocksize``, but no larger than the map (rounded up to
    16, TIFF's tile granularity)."""
    return min(blocksize, max(16, -(-max(h, w) // 16) * 16))


def downsample2(rows: np.ndarray) -> np.ndarray:
    """(D, 2m, W) -> (D, m, ceil(W/2)): the mean of each 2 x 2 block's non-NaN values
    (NaN where all four are NaN); an odd last column averages its own pixels."""
    D, n, W = rows.shape
    if W % 2:
        rows = np.concatenate([rows, np.full((D, n, 1), np.nan, rows.dtype)], axis=2)
    x = rows.reshape(D, n // 2, 2, rows.shape[2] // 2, 2)
    ok = ~np.isnan(x)
    s = np.where(ok, x, 0).sum(axis=(2, 4), dtype=np.float32)
    c = ok.sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan).astype(np.float32)


def quantize_int8(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """float -> int8 by ``rint((x - offset) / scale)`` clipped to [-127, 127]; NaN ->
    ``INT8_NODATA``. ``scale``/``offset`` broadcast against ``x`` (per band: shape (D,) for
    pixel-interleaved (..., D), (D, 1, 1) for band-first (D, h, w))."""
    q = np.rint((x.astype(np.float64) - offset) / scale)
    q = np.clip(np.nan_to_num(q, nan=0.0), -127, 127).astype(np.int8)
    q[np.isnan(x)] = INT8_NODATA
    return q


@dataclass
class _Level:
    """One resolution level: a block height of pending rows and its temporary file."""

    height: int
    width: int
    dim: int
    block: int
    path: Path
    encode: object  # (block, block, D) float32 -> bytes
    buf: np.ndarray = field(init=False)
    n: int = 0  # rows pending in buf
    done: int = 0  # rows written
    pending: np.ndarray | None = None  # an odd row waiting for its pair (next level)
    child: _Level | None = None
    counts: list[int] = field(default_factory=list)
    framed: bool = True  # tiles written with GDAL's leader and trailer
    buf_dtype: str = "float32"  # pending rows: float16 for a float16 COG (half the memory)

    @property
    def nbytes(self) -> int:
        return sum(self.counts) + (_FRAME * len(self.counts) if self.framed else 0)

    def __post_init__(self) -> None:
        self.buf = np.full((self.dim, self.block, self.width), np.nan, self.buf_dtype)
        self.file = open(self.path, "wb")

    def add(self, rows: np.ndarray) -> None:
        """Rows (D, n, width) float32 in order."""
        n, i = rows.shape[1], 0
        while i < n:
            k = min(self.block - self.n, n - i)
            self.buf[:, self.n : self.n + k] = rows[:, i : i + k]
            self.n, i = self.n + k, i + k
            if self.n == self.block:
                self._emit()
        if self.child is not None:
            if self.pending is not None:
                rows = np.concatenate([self.pending, rows], axis=1)
                self.pending = None
            if rows.shape[1] % 2:
                self.pending, rows = rows[:, -1:].copy(), rows[:, :-1]
            if rows.shape[1]:
                self.child.add(downsample2(rows))

    def _emit(self) -> None:
        b = self.block
        for c in range(0, self.width, b):
            t = self.buf[:, :, c : c + b]  # (D, b, <= b)
            tile = np.zeros((b, b, self.dim), np.float32)  # pixel-interleaved, padded with 0
            tile[: self.n, : t.shape[2]] = t[:, : self.n].transpose(1, 2, 0)
            data = self.encode(tile)
            self.file.write(_framed(data) if self.framed else data)
            self.counts.append(len(data))
        self.done += self.n
        self.n = 0
        self.buf.fill(np.nan)

    def finish(self) -> None:
        if self.child is not None and self.pending is not None:
            pair = np.concatenate([self.pending, np.full_like(self.pending, np.nan)], axis=1)
            self.child.add(downsample2(pair))
            self.pending = None
        if self.n:
            self._emit()
        self.file.close()
        if self.done != self.height:
            raise RuntimeError(f"COG level got {self.done} of {self.height} rows")
        if self.child is not None:
            self.child.finish()

    def close(self) -> None:
        self.file.close()


class StreamingCog:
    """A COG of ``dim`` bands on ``grid`` (an :class:`rsfm_core.sample.Grid`) written from
    rows that arrive in order (see the module docstring). ``dtype``: float16, float32 or
    int8 (per-band scale/offset given to :meth:`close`). Temporaries live next to
    ``near`` (default ``path``), named after it; :meth:`abort` removes them."""

    def __init__(self, path, grid, dim: int, dtype: str = "float16", blocksize: int = 256,
                 compress: str = "deflate", near=None) -> None:  # fmt: skip
        if dtype not in _FORMATS:
            raise ValueError(f"COG dtype must be one of {sorted(_FORMATS)}, got {dtype!r}")
        if compress.lower() not in ("deflate", "none"):
            raise ValueError(f"the streaming COG writes deflate or none, got {compress!r}")
        self.path, self.grid, self.dim, self.dtype = Path(path), grid, dim, dtype
        self.near = Path(near) if near is not None else self.path  # temporaries' name
        self.compressed = compress.lower() == "deflate"
        self.block = cog_blocksize(grid.height, grid.width, blocksize)
        self.temps: list[Path] = []
        enc = self._raw32 if dtype == "int8" else self._final
        h, w, self.levels = grid.height, grid.width, []
        for k in range(overview_levels(h, w, self.block) + 1):
            tmp = temp_path(self.near, f"l{k}", ".bin")
            self.temps.append(tmp)
            lv = _Level(h, w, dim, self.block, tmp, enc, framed=dtype != "int8",
                        buf_dtype="float16" if dtype == "float16" else "float32")  # fmt: skip
            if self.levels:
                self.levels[-1].child = lv
            self.levels.append(lv)
            h, w = -(-h // 2), -(-w // 2)
        self.rows = 0

    # ---------------------------------------------------------------- encoding
    def _compress(self, raw: bytes) -> bytes:
        return zlib.compress(raw, 6) if self.compressed else raw

    def _final(self, tile: np.ndarray) -> bytes:
        return self._compress(tile.astype(_FORMATS[self.dtype][0]).tobytes())

    @staticmethod
    def _raw32(tile: np.ndarray) -> bytes:  # int8: kept as float32 until the range is known
        return tile.astype("<f4").tobytes()

    # ---------------------------------------------------------------- streaming
    def write(self, row: int, dense: np.ndarray) -> None:
        """Token rows ``[row, row + n)`` of the map, ``dense`` (D, n, W) float32, NaN =
        nodata; rows must come in order without gaps."""
        if row != self.rows:
            raise ValueError(f"COG rows must come in order: got row {row}, expected {self.rows}")
        self.levels[0].add(np.asarray(dense, dtype=np.float32))
        self.rows += dense.shape[1]

    def close(self, tags: Mapping[str, str], scale=None, offset=None) -> Path:
        """Lay out the file (module docstring); ``tags``: dataset tags; int8 needs the
        per-band ``scale`` and ``offset`` (value = q * scale + offset)."""
        try:
            self.levels[0].finish()
            if self.dtype == "int8":
                if scale is None or offset is None:
                    raise ValueError("an int8 COG needs the per-band scale and offset")
                self._quantize_levels(np.asarray(scale), np.asarray(offset))
            nodata = INT8_NODATA if self.dtype == "int8" else float("nan")
            extra = gdal_tags(self.near, self.grid, self.dim, tags, nodata, scale, offset)
            self._assemble(extra)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        for lv in self.levels:
            lv.close()
        remove_quietly(*self.temps)

    def _quantize_levels(self, scale: np.ndarray, offset: np.ndarray) -> None:
        tile_bytes = self.block * self.block * self.dim * 4
        for k, lv in enumerate(self.levels):
            out = temp_path(self.near, f"q{k}", ".bin")
            self.temps.append(out)
            counts = []
            with open(lv.path, "rb") as src, open(out, "wb") as dst:
                for _ in lv.counts:
                    x = np.frombuffer(src.read(tile_bytes), "<f4").reshape(-1, self.dim)
                    q = quantize_int8(x, scale, offset)
                    data = self._compress(q.tobytes())
                    dst.write(_framed(data))
                    counts.append(len(data))
            lv.path, lv.counts, lv.framed = out, counts, True

    # ---------------------------------------------------------------- layout
    def _ifd_entries(self, k: int, lv: _Level, offsets, extra) -> list[tuple]:
        """(tag, type, values) of level ``k``'s IFD; tile offsets filled in by the caller."""
        _, bits, fmt = _FORMATS[self.dtype]
        D = self.dim
        e = [(254, 4, [1 if k else 0]), (256, 4, [lv.width]), (257, 4, [lv.height]),
             (258, 3, [bits] * D), (259, 3, [8 if self.compressed else 1]), (262, 3, [1]),
             (277, 3, [D]), (284, 3, [1]), (322, 3, [self.block]), (323, 3, [self.block]),
             (324, None, offsets), (325, 4, lv.counts), (339, 3, [fmt] * D)]  # fmt: skip
        if D > 1:
            e.append((338, 3, [0] * (D - 1)))
        if k == 0:
            e += [(t, typ, val) for t, (typ, val) in extra.items() if t != _GDAL_NODATA]
        if _GDAL_NODATA in extra:
            e.append((_GDAL_NODATA, *extra[_GDAL_NODATA]))
        return sorted(e, key=lambda x: x[0])

    def _assemble(self, extra: dict) -> None:
        data_size = sum(lv.nbytes for lv in self.levels)
        big = data_size + 2**24 >= BIGTIFF_AT  # headroom for header and IFDs
        off_type = 16 if big else 4
        head = 16 if big else 8
        ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST):06d} bytes\n{_GHOST}".encode()
        ghost += b"\0" * ((head + len(ghost)) & 1)  # IFDs start on a word boundary
        pos = head + len(ghost)
        # first pass: IFD sizes with placeholder offsets
        entries = [self._ifd_entries(k, lv, [0] * len(lv.counts), extra)
                   for k, lv in enumerate(self.levels)]  # fmt: skip
        sizes = [_ifd_size(e, big, off_type) for e in entries]
        ifd_pos = []
        for s in sizes:
            ifd_pos.append(pos)
            pos += s
        data_start, starts = pos, {}
        for k in range(len(self.levels) - 1, -1, -1):  # smallest overview first
            starts[k] = pos
            pos += self.levels[k].nbytes
        blobs = []
        for k, lv in enumerate(self.levels):
            disk = np.asarray(lv.counts, np.int64) + _FRAME  # framed tiles, back to back
            offs = np.concatenate([[0], np.cumsum(disk)[:-1]]) + starts[k] + 4
            e = self._ifd_entries(k, lv, offs.tolist(), extra)
            nxt = ifd_pos[k + 1] if k + 1 < len(self.levels) else 0
            blob = _ifd_bytes(e, ifd_pos[k], nxt, big, off_type)
            assert len(blob) == sizes[k]
            blobs.append(blob)
        with open(self.path, "wb") as f:
            if big:
                f.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, ifd_pos[0]))
            else:
                f.write(b"II" + struct.pack("<HI", 42, ifd_pos[0]))
            f.write(ghost)
            for b in blobs:
                f.write(b)
            assert f.tell() == data_start
            for k in range(len(self.levels) - 1, -1, -1):
                f.flush()
                _append(f, self.levels[k].path, self.levels[k].nbytes)
            f.flush()
            os.fsync(f.fileno())


def _framed(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data + data[-4:]


def _pack(typ: int, values) -> bytes:
    code, _ = _TYPES[typ]
    if typ == 2:
        return values if isinstance(values, bytes) else str(values).encode() + b"\0"
    if isinstance(values, bytes):  # raw, copied from another file
        return values
    return struct.pack(f"<{len(values)}{code}", *values)


def _count(typ: int, raw: bytes) -> int:
    return len(raw) // _TYPES[typ][1]


def _resolve(e, off_type):
    return [(t, off_type if typ is None else typ, val) for t, typ, val in e]


def _ifd_size(e, big: bool, off_type: int) -> int:
    inline, entry, cnt = (8, 20, 8) if big else (4, 12, 2)
    size = cnt + len(e) * entry + (8 if big else 4)
    for _, typ, val in _resolve(e, off_type):
        n = len(_pack(typ, val))
        if n > inline:
            size += n + (n & 1)  # word-aligned
    return size


def _ifd_bytes(e, at: int, nxt: int, big: bool, off_type: int) -> bytes:
    inline, entry = (8, 20) if big else (4, 12)
    e = _resolve(e, off_type)
    head = struct.pack("<Q", len(e)) if big else struct.pack("<H", len(e))
    out_of_line = at + len(head) + len(e) * entry + (8 if big else 4)
    body, extra = b"", b""
    for tag, typ, val in e:
        raw = _pack(typ, val)
        n = _count(typ, raw)
        if len(raw) <= inline:
            ref = raw.ljust(inline, b"\0")
        else:
            ref = struct.pack("<Q" if big else "<I", out_of_line + len(extra))
            extra += raw + (b"\0" if len(raw) & 1 else b"")
        body += struct.pack("<HHQ" if big else "<HHI", tag, typ, n) + ref
    tail = struct.pack("<Q" if big else "<I", nxt)
    return head + body + tail + extra


def _append(f, src: Path, n: int) -> None:
    """Append ``n`` bytes of ``src`` to the open file ``f`` (kernel-side copy)."""
    with open(src, "rb") as s:
        done = 0
        try:
            while done < n:
                k = os.copy_file_range(s.fileno(), f.fileno(), n - done)
                if k == 0:
                    break
                done += k
        except (AttributeError, OSError) as e:
            if done or getattr(e, "errno", None) in (28,):  # ENOSPC: not a fallback case
                raise
        f.seek(0, os.SEEK_END)
        while done < n:
            chunk = s.read(min(2**24, n - done))
            if not chunk:
                raise OSError(f"{src}: {n - done} bytes short")
            f.write(chunk)
            done += len(chunk)


# ---------------------------------------------------------------------------- tags via GDAL


def gdal_tags(near: Path, grid, dim: int, tags: Mapping[str, str], nodata, scale=None,
              offset=None) -> dict[int, tuple[int, bytes]]:  # fmt: skip
    """GDAL's own encoding of the georeference and metadata: rasterio writes a 1 x 1
    GeoTIFF with them next to ``near`` and its tags are read back raw, ``{tag: (type,
    bytes)}`` (GeoKeys, tie point/pixel scale or transformation, GDAL_METADATA,
    GDAL_NODATA)."""
    import rasterio

    from .raster import affine_of

    tmp = temp_path(near, "hdr", ".tif")
    try:
        with rasterio.open(
            tmp, "w", driver="GTiff", width=1, height=1, count=dim, dtype="float32",
            crs=grid.crs, transform=affine_of(grid), nodata=nodata,
        ) as ds:  # fmt: skip
            ds.update_tags(**{k: str(v) for k, v in tags.items()})
            for i in range(1, dim + 1):
                ds.set_band_description(i, f"emb_{i - 1:03d}")
            if scale is not None:
                ds.scales = tuple(float(v) for v in scale)
                ds.offsets = tuple(float(v) for v in offset)
        ifd = read_ifds(tmp)[0]
    finally:
        remove_quietly(tmp)
    return {t: (ifd[t][0], ifd[t][2]) for t in (*_COPIED, _GDAL_NODATA) if t in ifd}


# ---------------------------------------------------------------------------- reading / checking


def read_ifds(path) -> list[dict[int, tuple[int, int, bytes]]]:
    """Every IFD of a (Big)TIFF as ``{tag: (type, count, raw value bytes)}``, plus the
    key ``-1``: ``(0, 0, offset of the IFD)``."""
    with open(path, "rb") as f:
        hdr = f.read(16)
        if hdr[:2] != b"II":
            raise ValueError(f"{path}: not a little-endian TIFF")
        (magic,) = struct.unpack("<H", hdr[2:4])
        big = magic == 43
        if magic not in (42, 43):
            raise ValueError(f"{path}: not a TIFF (magic {magic})")
        pos = struct.unpack("<Q", hdr[8:16])[0] if big else struct.unpack("<I", hdr[4:8])[0]
        out, seen = [], set()
        while pos and pos not in seen:
            seen.add(pos)
            f.seek(pos)
            (n,) = struct.unpack("<Q", f.read(8)) if big else struct.unpack("<H", f.read(2))
            entry, inline = (20, 8) if big else (12, 4)
            raw = f.read(n * entry + (8 if big else 4))
            ifd = {-1: (0, 0, pos)}
            for i in range(n):
                chunk = raw[i * entry : (i + 1) * entry]
                tag, typ = struct.unpack("<HH", chunk[:4])
                cnt = struct.unpack("<Q" if big else "<I", chunk[4 : 4 + (8 if big else 4)])[0]
                size = _TYPES.get(typ, ("B", 1))[1] * cnt
                ref = chunk[4 + (8 if big else 4) :]
                if size <= inline:
                    val = ref[:size]
                else:
                    here = f.tell()
                    f.seek(struct.unpack("<Q" if big else "<I", ref)[0])
                    val = f.read(size)
                    f.seek(here)
                ifd[tag] = (typ, cnt, val)
            out.append(ifd)
            pos = struct.unpack("<Q" if big else "<I", raw[n * entry :])[0]
    return out


def _ints(field) -> list[int]:
    typ, cnt, raw = field
    return list(struct.unpack(f"<{cnt}{_TYPES[typ][0]}", raw))


def head_ghost(path) -> bytes:
    """GDAL's structural-metadata ghost area (empty when the file has none)."""
    with open(path, "rb") as f:
        head = f.read(16 + 43)
        at = 16 if head[2:4] == struct.pack("<H", 43) else 8
        marker = b"GDAL_STRUCTURAL_METADATA_SIZE="
        if head[at : at + len(marker)] != marker:
            return b""
        f.seek(at + len(marker))
        n = int(f.read(6))
        f.seek(at + len(marker) + 6 + len(" bytes\n"))
        return f.read(n)


def _check_frames(path, images) -> list[str]:
    """Each tile's leader (its size) and trailer (its last 4 bytes), as the ghost says."""
    with open(path, "rb") as f:
        for k, ifd in enumerate(images):
            for o, c in zip(_ints(ifd[324]), _ints(ifd[325])):
                if not c:
                    continue
                f.seek(o - 4)
                lead = f.read(4)
                f.seek(o + c - 4)
                tail = f.read(8)
                if struct.unpack("<I", lead)[0] != c or tail[:4] != tail[4:]:
                    return [f"a tile of image {k} at byte {o} lacks the leader/trailer the "
                            "ghost area announces"]  # fmt: skip
    return []


def validate_cog(path) -> list[str]:
    """The layout rules of a Cloud-Optimized GeoTIFF (those of GDAL's
    ``validate_cloud_optimized_geotiff.py``, checked on the raw TIFF structure): every
    image tiled; the main IFD right after the header (and GDAL's ghost area, if any);
    overview IFDs after it, largest first, each a reduced-resolution image; all IFDs
    before any tile data; the first tile of the smallest overview first, of the full
    resolution last; tiles of each image in row-major order inside the file. Returns
    the problems found (empty: a valid COG)."""
    errors = []
    try:
        ifds = read_ifds(path)
    except (OSError, ValueError, struct.error) as e:
        return [f"cannot read the TIFF structure: {e}"]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16 + 80)
    big = head[2:4] == struct.pack("<H", 43)
    expect = 16 if big else 8
    marker = b"GDAL_STRUCTURAL_METADATA_SIZE="
    if head[expect : expect + len(marker)] == marker:
        ghost = int(head[expect + len(marker) : expect + len(marker) + 6])
        expect += len(marker) + 6 + len(" bytes\n") + ghost
        expect += expect & 1  # IFDs start on a word boundary
    if ifds[0][-1][2] != expect:
        errors.append(f"the main IFD is at byte {ifds[0][-1][2]}, not right after the header "
                      f"({expect})")  # fmt: skip
    images = [i for i in ifds if not (_ints(i[254])[0] & 4 if 254 in i else 0)]  # no masks
    for k, ifd in enumerate(images):
        name = "the full resolution" if k == 0 else f"overview {k}"
        if not all(t in ifd for t in (322, 323, 324, 325)):
            errors.append(f"{name} is not tiled")
            continue
        if k and not (254 in ifd and _ints(ifd[254])[0] & 1):
            errors.append(f"{name} is not marked as a reduced-resolution image")
        if k:
            prev = images[k - 1]
            if _ints(ifd[256])[0] > _ints(prev[256])[0] or _ints(ifd[257])[0] > _ints(prev[257])[0]:
                errors.append(f"{name} is larger than the image before it")
        offs, counts = _ints(ifd[324]), _ints(ifd[325])
        nz = [o for o, c in zip(offs, counts) if c]
        if any(b < a for a, b in zip(nz, nz[1:])):
            errors.append(f"the tiles of {name} are not in row-major order in the file")
        if any(o + c > size for o, c in zip(offs, counts)):
            errors.append(f"a tile of {name} reaches past the end of the file")
    if b"BLOCK_LEADER=SIZE_AS_UINT4" in head_ghost(path):
        errors += _check_frames(path, images)
    ifd_pos = [i[-1][2] for i in ifds]
    if any(b < a for a, b in zip(ifd_pos, ifd_pos[1:])):
        errors.append("the IFDs are not in increasing order (main first, then overviews)")
    firsts = []
    for ifd in images:
        if 324 in ifd:
            offs = [o for o, c in zip(_ints(ifd[324]), _ints(ifd[325])) if c]
            firsts.append(min(offs) if offs else 0)
    data = [o for o in firsts if o]
    if data and min(data) < max(ifd_pos):
        errors.append("tile data comes before the last IFD (IFDs must all come first)")
    for k in range(len(firsts) - 1):
        if firsts[k] and firsts[k + 1] and firsts[k] < firsts[k + 1]:
            what = "the full resolution" if k == 0 else f"overview {k}"
            errors.append(f"the first tile of {what} comes before that of overview {k + 1}")
    return errors


__all__ = ["INT8_NODATA", "StreamingCog", "cog_blocksize", "downsample2", "gdal_tags",
           "overview_levels", "read_ifds", "validate_cog"]  # fmt: skip
