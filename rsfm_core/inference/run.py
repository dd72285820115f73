"""One ``Embedder.embed_rasters`` run: check inputs and outputs, stream bands of tiles
into per-rank intermediates, merge them (rank 0), and finalize every output.

Failure anywhere (a bad tile, a full disk, Ctrl-C, SIGTERM, another rank) removes every
temporary and leaves no output under its final name: outputs are renamed into place
only after all of them were written. In detail:

- **Disk space.** Before anything is computed, every output folder must have room for
  the outputs and the temporaries that coexist with them (:func:`space_needed`, an
  upper bound: uncompressed sizes); a write that still finds the disk full raises
  :class:`~rsfm_core.files.NoSpaceError` ("no space left on <folder>"), never a raw
  GDAL/pyarrow error, and nothing is written through a memory map (SIGBUS).
- **Signals.** While a run is in progress (main thread), SIGINT and SIGTERM raise
  :class:`Interrupted` (a ``KeyboardInterrupt``) wherever Python runs; GDAL can swallow
  an exception raised inside one of its callbacks, so the signal is also remembered and
  checked again before the first output is renamed into place: an interrupted run never
  replaces the old outputs. Once the renames have started they finish (a few ``rename``
  calls), then the interrupt is raised. The CLI exits 128 + signal (130, 143). Handlers
  an application installed itself are left alone.
- **One run per output.** Rank 0 holds a lock (``.<first output>.lock``, removed at the
  end) for the whole run; a second run on the same output is refused. Holding it, it
  removes the temporaries that killed runs left next to each output
  (:func:`rsfm_core.files.stale_temps`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..files import (
    NoSpaceError,
    check_free_space,
    commit,
    exclusive_lock,
    no_space_error,
    remove_quietly,
    stale_temps,
    temp_path,
)
from ..io import RasterError, writers
from ..io.cog import StreamingCog
from ..io.geoparquet import ChipContext, ChipWriter
from ..io.stac import stac_item, stac_path, write_item
from ..sample import from_days
from . import distributed
from .inputs import missing_report
from .options import EmbedResult, auto_dtype
from .stitching import Rows
from .stream import stream
from .tiles import RasterSource, pixel_area_km2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    out: Path | None
    parquet: Path | None
    npz: Path | None

    @staticmethod
    def check(out, parquet, npz) -> Outputs:
        o = Outputs(*(writers.check_writable(p) for p in (out, parquet, npz)))
        if o.near is None:
            raise ValueError("nothing to write: give out= (COG), parquet= and/or npz=")
        return o

    @property
    def near(self) -> Path | None:
        """Where temporaries go: next to the first output (same filesystem)."""
        return next((p for p in (self.out, self.parquet, self.npz) if p is not None), None)

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.out, self.parquet, self.npz) if p is not None]


# ---------------------------------------------------------------------------- space


def space_needed(layout, dim: int, outs: Outputs, opts, world: int = 1) -> dict[Path, int]:
    """Bytes each output folder needs at the peak of a run (an upper bound: the outputs
    uncompressed, plus the temporaries that exist next to them at the same time)."""
    tok = layout.tokens
    h, w = tok.height, tok.width
    D, item = dim, {"float32": 4, "float16": 2, "int8": 1}[opts.dtype]
    blocks = (-(-h // 64) * 64) * (-(-w // 64) * 64)  # the intermediate's 64 x 64 tiles
    pixel = outs.out is not None and opts.resolution == "pixel"
    inter = 0  # one rank streams the token COG directly: no intermediate
    if world > 1 or pixel:  # per-rank parts + the merged one; or the pixel path's
        inter = blocks * (D * 4 + 2) * (2 if world > 1 else 1)
    need = {outs.near.parent: inter}

    def add(path: Path | None, n: int) -> None:
        if path is not None:
            need[path.parent] = need.get(path.parent, 0) + int(n)

    if outs.out is not None:
        px = h * w * (layout.token_px**2 if pixel else 1)
        cog = px * D * item * 4 // 3  # + overviews
        if pixel:  # GDAL: the upsampled and quantised temporaries, then the COG
            extra = px * D * 4 + (px * D if opts.dtype == "int8" else 0)
        elif opts.dtype == "int8":  # the levels as float32, quantised, then the file
            extra = px * D * 5 * 4 // 3
        else:  # the compressed levels, then the file
            extra = cog
        add(outs.out, cog + extra)
    chip = max(1, (opts.chip or layout.tile) // layout.token_px)
    chips = -(-h // chip) * -(-w // chip)
    add(outs.parquet, 2 * chips * (D * 4 + 512))  # rows file + final file
    npy = h * w * D * (4 if opts.dtype == "float32" else 2)
    add(outs.npz, 2 * npy + chips * (D * 4 + 40))  # .npy + .npz
    return {folder: int(n * 1.05) + 2**20 for folder, n in need.items()}


def check_space(needs: dict[Path, int]) -> None:
    for folder, n in needs.items():
        check_free_space(folder, n, "the embedding outputs and their temporaries")


def _as_no_space(e: BaseException, needs: dict[Path, int]) -> NoSpaceError | None:
    """``e`` as "no space left on <folder>" when a full disk caused it, else None."""
    for folder, n in needs.items():
        err = no_space_error(e, folder, "the embedding outputs", need=n)
        if err is not None:
            return err
    return None


# ---------------------------------------------------------------------------- signals


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during a run; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; no output was replaced")


class _Signals:
    """SIGINT/SIGTERM handlers for the length of a run (see the module docstring)."""

    _DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        if not self.deferred:
            raise Interrupted(signum)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig, default in self._DEFAULTS.items():
                if signal.getsignal(sig) is default:  # an application's own handler stays
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def check(self) -> None:
        """Raise if a signal arrived (also when GDAL swallowed the exception)."""
        if self.received is not None:
            raise Interrupted(self.received)

    @contextmanager
    def defer(self):
        """No interrupt inside (the renames); a signal that came meanwhile is raised after."""
        self.check()
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False
        if self.received is not None:
            log.warning("interrupted while the outputs were being renamed: they are complete")
            self.check()


# ---------------------------------------------------------------------------- outputs lock


@contextmanager
def _own_outputs(outs: Outputs):
    """Rank 0: the outputs' lock for the run; stale temporaries of killed runs go."""
    lock = outs.near.with_name(f".{outs.near.name}.lock")
    with exclusive_lock(lock, f"output {outs.near}", remove=True):
        stale = [t for p in (*outs.paths, stac_path(outs.near)) for t in stale_temps(p)]
        if stale:
            log.warning("removing %d temporary file(s) left by an interrupted run: %s",
                        len(stale), ", ".join(t.name for t in stale))  # fmt: skip
            remove_quietly(*stale)
        yield


def _tags(emb, source: RasterSource, opts) -> dict[str, str]:
    inputs = {
        n: {
            "sensor": d.sensor,
            "bands": list(d.bands),
            "dates": [from_days(x).isoformat() for x in d.dates.tolist()],
        }
        for n, d in source.preflight.items()
    }
    i = emb.info
    return {
        "RSFM_MODEL": i.name,
        "RSFM_MODEL_SHA256": i.sha256,
        "RSFM_MODEL_VERIFIED": str(i.verified).lower(),
        "RSFM_MODEL_RSFM_VERSION": i.rsfm_version,
        "RSFM_VERSION": __version__,
        "RSFM_FEATURES": str(emb.dim),
        "RSFM_TOKEN_PX": str(source.layout.token_px),
        "RSFM_TILE": str(source.layout.tile),  # the tile used (smaller for small rasters)
        "RSFM_OVERLAP": str(source.layout.overlap),
        "RSFM_POSITIONS": opts.positions,
        "RSFM_RESOLUTION": opts.resolution,
        "RSFM_INPUTS": json.dumps(inputs, sort_keys=True),
    }


def _chip_context(emb, source: RasterSource, chip_tok: int) -> ChipContext:
    return ChipContext(
        grid=source.layout.grid,
        token_px=source.layout.token_px,
        chip_tok=chip_tok,
        modalities=list(emb.config.modalities),
        sensors=source.sensors,
        dates=source.dates,
    )


class _NpzChips:
    """Collects chip vectors for the npz (in memory: one row per chip)."""

    def __init__(self) -> None:
        self.vectors, self.windows, self.fractions = [], [], []

    def __call__(self, chips: list[dict]) -> None:
        for c in chips:
            self.vectors.append(c["vector"])
            self.windows.append(c["tok"])
            self.fractions.append(c["valid_fraction"])

    def arrays(self, dim: int, token_px: int) -> dict[str, np.ndarray]:
        return {
            "embedding": np.stack(self.vectors) if self.vectors else np.zeros((0, dim), np.float32),
            "window_px": np.asarray(self.windows, dtype=np.int64).reshape(-1, 4) * token_px,
            "valid_fraction": np.asarray(self.fractions, dtype=np.float32),
        }


class OutputSink:
    """Every output written from the token rows as the stream flushes them (issue 18: no
    separate finalize pass): the COG (:class:`rsfm_core.io.cog.StreamingCog`), the chips
    (GeoParquet, npz) of each completed strip of ``chip_tok`` rows, the ``.npy`` behind the
    npz, and the per-band range (int8). Rows come in order. :meth:`finish` completes the
    files under temporary names (``self.finals``); :meth:`abort` removes them all.
    ``resolution="pixel"`` keeps a token intermediate and GDAL's warp + COG copy at the
    end (upsampling needs neighbouring rows; not streamed)."""

    def __init__(self, emb, source, outs: Outputs, opts, chip_tok: int) -> None:
        layout, self.dim, self.opts = source.layout, emb.dim, opts
        self.emb, self.source, self.outs, self.chip_tok = emb, source, outs, chip_tok
        self.temps: list[Path] = []
        self.finals: dict[str, Path] = {}
        self.cog = self.pixel = self.chips = self.npy = self.npz_chips = None
        try:
            for key, path, suffix in (("out", outs.out, ".tif"), ("parquet", outs.parquet,
                                      ".parquet"), ("npz", outs.npz, ".npz")):  # fmt: skip
                if path is not None:
                    self.finals[key] = temp_path(path, "final", suffix)
                    self.temps.append(self.finals[key])
            self.targets = {k: getattr(outs, k) for k in self.finals}
            self.targets["stac"] = stac_path(outs.near)  # the run's STAC Item
            self.finals["stac"] = temp_path(self.targets["stac"], "final", ".json")
            self.temps.append(self.finals["stac"])
            tok = layout.tokens
            if outs.out is not None and opts.resolution == "token":
                self.cog = StreamingCog(self.finals["out"], tok, emb.dim, opts.dtype,
                                        opts.blocksize, opts.compress, outs.out)  # fmt: skip
            elif outs.out is not None:
                self.pixel = (temp_path(outs.near, "data", ".tif"),
                              temp_path(outs.near, "mask", ".tif"))  # fmt: skip
                self.temps += list(self.pixel)
                self.pixel_sink = writers.TiffSink(*self.pixel, tok, emb.dim)
            if outs.parquet is not None:
                tmp = temp_path(outs.parquet, "rows", ".parquet")
                self.temps.append(tmp)
                prov = {"model": emb.info.name, "sha256": emb.info.sha256,
                        "chip_px": chip_tok * layout.token_px}  # fmt: skip
                self.chips = ChipWriter(tmp, emb.dim, _chip_context(emb, source, chip_tok), prov)
            if outs.npz is not None:
                tmp = temp_path(outs.npz, "npy", ".npy")
                self.temps.append(tmp)
                dt = np.float32 if opts.dtype == "float32" else np.float16
                self.npy = writers.NpyWriter(tmp, dt, (emb.dim, tok.height, tok.width))
                self.npz_chips = _NpzChips()
        except BaseException:
            self.abort()
            raise
        self.lo = np.full(emb.dim, np.inf)
        self.hi = np.full(emb.dim, -np.inf)
        self.strip = np.empty((emb.dim, chip_tok, tok.width), np.float32)
        self.strip_bits = np.zeros((chip_tok, tok.width), np.uint16)
        self.strip_row, self.strip_n = 0, 0

    def write(self, rows) -> None:
        """Token rows ``rows.row ..`` (:class:`~rsfm_core.inference.stitching.Rows`)."""
        dense, bits = rows.dense, rows.bits
        flat = dense.reshape(dense.shape[0], -1)  # fmin/fmax skip NaN without a copy
        self.lo = np.fmin(self.lo, np.fmin.reduce(flat, axis=1))
        self.hi = np.fmax(self.hi, np.fmax.reduce(flat, axis=1))
        if self.npy is not None:
            self.npy.write_rows(rows.row, dense)
        if self.cog is not None:
            self.cog.write(rows.row, dense)
        if self.pixel is not None:
            self.pixel_sink.write(rows)
        if self.chips is not None or self.npz_chips is not None:
            i, n = 0, dense.shape[1]
            while i < n:
                k = min(self.chip_tok - self.strip_n, n - i)
                self.strip[:, self.strip_n : self.strip_n + k] = dense[:, i : i + k]
                self.strip_bits[self.strip_n : self.strip_n + k] = bits[i : i + k]
                self.strip_n, i = self.strip_n + k, i + k
                if self.strip_n == self.chip_tok:
                    self._chips()

    def _chips(self) -> None:
        if not self.strip_n:
            return
        n = self.strip_n
        chips = writers.chips_of_strip(self.strip[:, :n], self.strip_bits[:n], self.strip_row,
                                       self.chip_tok)  # fmt: skip
        for fn in (self.chips.write if self.chips else None, self.npz_chips):
            if fn is not None:
                fn(chips)
        self.strip_row += n
        self.strip_n = 0

    def finish(self) -> None:
        """Complete every output under its temporary name (``self.finals``)."""
        self._chips()
        tags = _tags(self.emb, self.source, self.opts)
        scale = offset = None
        if self.opts.dtype == "int8":
            scale, offset = writers.int8_params(self.lo, self.hi)
            tags["RSFM_QUANTIZATION"] = writers.INT8_NOTE
        if self.cog is not None:
            self.cog.close(tags, scale, offset)
        if self.pixel is not None:
            self.pixel_sink.close()
            spec = writers.CogSpec(self.opts.dtype, self.opts.resolution, self.opts.blocksize,
                                   self.opts.compress)  # fmt: skip
            stats = writers.Scan(self.lo, self.hi)
            writers.write_cog(self.pixel[0], self.finals["out"], spec, stats, tags,
                              self.source.layout.grid)  # fmt: skip
        if self.chips is not None:
            self.chips.finish(self.finals["parquet"])
        if self.npy is not None:
            self.npy.close()
            extra = self.npz_chips.arrays(self.dim, self.source.layout.token_px)
            writers.write_npz(self.finals["npz"], self.npy.array(), self.source.layout.tokens,
                              extra)  # fmt: skip
        names = {"out": "embeddings", "parquet": "chips", "npz": "npz"}
        assets = {names[k]: p for k, p in self.targets.items() if k in names}
        grid = self.source.layout.tokens
        if self.opts.resolution == "pixel":
            grid = self.source.layout.grid
        item = stac_item(self.targets["stac"].name.removesuffix(".stac.json"), grid, tags,
                         assets, self.targets["stac"], self.opts.dtype)  # fmt: skip
        write_item(self.finals["stac"], item)

    def close(self) -> None:
        if self.npy is not None:
            self.npy.close()
        if self.pixel is not None:
            self.pixel_sink.close()

    def abort(self) -> None:
        """Remove every temporary (and the not yet renamed outputs)."""
        self.close()
        if self.cog is not None:
            self.cog.abort()
        remove_quietly(*self.temps)


def finalize(sink: OutputSink, outs: Outputs, signals=None) -> None:
    """Complete the outputs the sink streamed and rename each into place, only when all
    are written (and no signal arrived: ``signals``, a :class:`_Signals`)."""
    signals = signals or _Signals()
    try:
        sink.finish()
        with signals.defer():  # all written: now rename each into place
            for key, tmp in sink.finals.items():
                commit(tmp, sink.targets[key])
    finally:
        sink.abort()


def _replay(data: Path, mask: Path, sink: OutputSink, step: int = 64) -> None:
    """Rank 0 of a multi-rank run: the merged intermediate's rows into ``sink``."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(data) as ds, rasterio.open(mask) as ms:
        for r in range(0, ds.height, step):
            win = Window(0, r, ds.width, min(step, ds.height - r))
            sink.write(Rows(r, ds.read(window=win), ms.read(1, window=win)))


def _merge(parts: list[tuple[Path, Path]], bands, layout, near: Path, dim: int):
    """Rank 0: every band's owned rows from its owner's part into one intermediate."""
    import rasterio

    data, mask = temp_path(near, "data", ".tif"), temp_path(near, "mask", ".tif")
    writers.create_intermediate(data, layout.tokens, dim, "float32", float("nan"))
    writers.create_intermediate(mask, layout.tokens, 1, "uint16", None)
    with rasterio.open(data, "r+") as d, rasterio.open(mask, "r+") as m:
        for b in bands:
            src = parts[b.index % len(parts)]
            writers.copy_rows(src[0], d, b.out_start, b.out_end - b.out_start)
            writers.copy_rows(src[1], m, b.out_start, b.out_end - b.out_start)
    return data, mask


def _compute(emb, source, d, bands, opts, timer, outs, chip_tok):
    """Stream this rank's bands: one rank writes the outputs directly (an
    :class:`OutputSink`); several write per-rank intermediates for rank 0 to merge."""
    mine = [b for b in bands if b.index % d.world == d.rank]
    if not d.active:
        sink = OutputSink(emb, source, outs, opts, chip_tok)
        try:
            counts = stream(emb.forward_tiles, emb.dim, source, mine, sink, opts, timer)
        except BaseException:
            sink.abort()
            raise
        return sink, counts
    part = (temp_path(outs.near, f"part{d.rank}", ".tif"),
            temp_path(outs.near, f"mask{d.rank}", ".tif"))  # fmt: skip
    try:
        sink = writers.TiffSink(*part, source.layout.tokens, emb.dim)
        try:
            counts = stream(
                emb.forward_tiles, emb.dim, source, mine, sink, opts, timer, d.rank == 0
            )
        finally:
            sink.close()
    except BaseException:
        remove_quietly(*part)
        raise
    return part, counts


def _run(emb, source, outs: Outputs, opts, chip_tok: int, timer: dict, signals: _Signals):
    """Compute (every rank) and finalize (rank 0); returns every rank's tile counts."""
    import rasterio

    layout = source.layout
    with ExitStack() as stack:
        d = stack.enter_context(distributed.session(opts.distributed, emb.device))
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=opts.cache_mb))
        needs = space_needed(layout, emb.dim, outs, opts, d.world)
        err = None
        if d.rank == 0:
            try:
                check_space(needs)
                stack.enter_context(_own_outputs(outs))
            except Exception as e:  # reported to the other ranks, then re-raised
                err = e
        if not distributed.agree(d, err is None):
            raise err or RuntimeError("rank 0 refused the outputs; see its log")
        bands = distributed.plan_bands(layout, d.world, opts.rows_per_band)
        part, counts, err = None, (0, 0), None
        try:
            part, counts = _compute(emb, source, d, bands, opts, timer, outs, chip_tok)
        except Exception as e:  # reported to the other ranks, then re-raised
            err = _as_no_space(e, needs) or e
        if not d.active:  # one rank: ``part`` is the OutputSink that streamed the outputs
            if err is not None:
                raise err
            t0 = time.perf_counter()
            try:
                finalize(part, outs, signals)
            except Exception as e:
                raise _as_no_space(e, needs) or e from None
            finally:
                timer["finalize"] = time.perf_counter() - t0
            return [counts]
        parts = distributed.gather(d, part)
        if not distributed.agree(d, err is None):
            remove_quietly(*(part or ()))
            raise err or RuntimeError("embedding failed on another rank; see its log")
        counts = distributed.gather(d, counts)
        err = None
        if d.rank == 0:
            t0 = time.perf_counter()
            try:
                merged = _merge(parts, bands, layout, outs.near, emb.dim)
                try:
                    sink = OutputSink(emb, source, outs, opts, chip_tok)
                    try:
                        _replay(*merged, sink)
                    except BaseException:
                        sink.abort()
                        raise
                    finalize(sink, outs, signals)
                finally:
                    remove_quietly(*merged, *(p for pr in parts for p in pr))
            except Exception as e:
                err = _as_no_space(e, needs) or e
            timer["finalize"] = time.perf_counter() - t0
        if not distributed.agree(d, err is None):
            raise err or RuntimeError("writing the outputs failed on rank 0; see its log")
        timer.update(distributed.broadcast(d, timer))
    return counts


def run(emb, inputs, out, parquet, npz, opts):
    """The body of :meth:`Embedder.embed_rasters`: ``emb`` gives ``forward_tiles``,
    ``dim``, ``config``, ``device`` and ``info``."""
    t_start = time.perf_counter()
    outs = Outputs.check(out, parquet, npz)
    source = RasterSource(emb.config, inputs, opts.tile, opts.overlap, opts.region)
    layout = source.layout
    if opts.dtype == "auto":
        px = layout.token_px**2 if opts.resolution == "pixel" else 1
        dt = auto_dtype(layout.tokens.height * px, layout.tokens.width, emb.dim)
        opts = dataclasses.replace(opts, dtype=dt)
        log.info("dtype auto: %s COG values", dt)
    notes = missing_report(emb.config, source.preflight)
    chip = opts.chip or layout.tile
    if chip % layout.token_px:
        raise ValueError(
            f"chip {chip} px must be a multiple of the token size {layout.token_px} px"
        )
    timer = {"read": 0.0, "compute": 0.0, "write": 0.0, "finalize": 0.0}
    with _Signals() as signals:
        counts = _run(emb, source, outs, opts, chip // layout.token_px, timer, signals)
    timer["total"] = time.perf_counter() - t_start
    g = layout.grid
    result = EmbedResult(
        out=outs.out, parquet=outs.parquet, npz=outs.npz, grid=layout.tokens,
        tiles=layout.num_tiles, computed=sum(c for c, _ in counts),
        skipped=sum(s for _, s in counts),
        seconds=timer, pixels=g.height * g.width, km2=g.height * g.width * pixel_area_km2(g),
        warnings=notes,
    )  # fmt: skip
    log.info("embedded %s", result.summary())
    return result


__all__ = ["Interrupted", "OutputSink", "Outputs", "RasterError", "finalize", "run", "space_needed"]
