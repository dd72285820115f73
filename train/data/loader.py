"""Pretraining data: a deterministic, resumable stream of :class:`ViewPair` micro-batches.

``make_loader(cfg, rank, world_size, seed, start)`` returns an iterable of ViewPairs
with ``.state() -> DataPosition`` for checkpoints. Samples come from webdataset shards
(``data.source: shards``, written by ``rsfm prepare``) or from synthetic scenes generated
on the fly (``data.source: synthetic``); views are cut by :mod:`rsfm_train.data.views`.

Streams: each rank runs ``W = max(1, data.workers)`` streams (one per DataLoader worker);
stream ``s = rank * W + worker`` of ``S = world_size * W`` streams reads a disjoint part of
the data and runs through epochs on its own, forever (training counts steps, not epochs;
``epochs=`` stops after that many, for evaluation and tests).

- Shards: in epoch e the shard list is permuted by ``(seed, e)`` and stream s takes every
  S-th shard. Its shards are read in groups of ``data.shuffle_shards``, streamed through a
  shuffle buffer of ``data.shuffle_buffer`` samples (:func:`_shuffle_buffer`, draws seeded
  by ``(seed, e, s, group)``): memory is bounded by the buffer, not the shard size.
- Synthetic: sample i (scene seed derived from ``(seed, i)``) belongs to stream ``i % S``
  and each epoch visits that stream's samples in a permutation seeded by ``(seed, e, s)``.
  A stream keeps the scenes it made (up to ``data.synthetic_cache_mb``): after the first
  epoch, generation costs nothing.
- Mixed (``data.source: mixed``, ``data.mix``): several sources (shard folders or the
  synthetic source), each with its own view size and dates per view. Every micro-batch
  comes from ONE source (its samples share sensors, bands and chip size, so they collate),
  chosen by a generator keyed by ``(seed, "mix", stream, batch index)`` with probability
  proportional to the weights; each source runs its own stream as above.
- Views and dropout draw from generators keyed by ``(seed, epoch, sample key)``, never
  from global or per-worker RNG state, so a sample's views do not depend on who reads it.

Exact resume: a stream's position is ``(epoch, shards_done, samples_done)`` (mixed: the
batches handed out and each source's position) — whole groups
consumed, then samples consumed from the shuffled current group — which re-creates its
state by re-reading at most one group. Each batch carries its stream's position; the
loader keeps the position of the last batch handed out per stream, and the worker whose
batch is next. A DataLoader hands batches out round-robin from worker 0, so a resumed
loader renames its workers (physical ``i`` runs stream ``(i + next_worker) % W``): it
yields exactly the batches the uninterrupted run would have. This holds while streams
are endless; with ``epochs=`` set, streams that end early change the round-robin.

Corrupt samples (undecodable members, truncated tars) are logged and remembered per
stream by identity (shard URL + sample key, or shard URL + tar error), in the position:
a known-bad sample is skipped without decoding or counting when a later epoch (or a
resumed run) reads it again, so ``data.max_corrupt`` bounds the number of *distinct*
bad samples of one stream; past it the run aborts with :class:`DataError`. The list is
reported at the end of training (``DataPosition.corrupt_samples``).
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rsfm_core.sample import ModalityData

from ..config import PretrainConfig
from .shards import CorruptSample, ShardList, decode_sample, iter_shards, resolve_shards
from .views import SampleViews, ViewPair, ViewSpec, collate_views, make_views

log = logging.getLogger("rsfm_train")

__all__ = [
    "DataError",
    "DataPosition",
    "LoaderOptions",
    "StreamPosition",
    "ViewPair",
    "ViewPairLoader",
    "make_loader",
]


class DataError(RuntimeError):
    """The data stream cannot go on (too many corrupt samples); the message says why."""


def _rng(seed: int, *key: object) -> np.random.Generator:
    """A generator keyed by purpose and identity, independent of any other draw."""
    return np.random.default_rng([seed] + [zlib.crc32(str(k).encode()) for k in key])


# ---------------------------------------------------------------------------- positions


@dataclass
class StreamPosition:
    """Where one (rank, worker) stream is: the next sample is sample ``samples_done`` of
    the shuffled group that starts at shard ``shards_done`` of epoch ``epoch``'s list
    (synthetic: sample ``samples_done`` of the epoch)."""

    epoch: int = 0
    shards_done: int = 0
    samples_done: int = 0
    corrupt: int = 0  # distinct corrupt samples met so far (= len(bad))
    batches: int = 0  # mixed only: batches this stream handed out
    parts: list[dict] = field(default_factory=list)  # mixed only: each source's position
    bad: list[str] = field(default_factory=list)  # the corrupt samples: "<url>#<key>"

    def moved(self, epoch: int, shards_done: int, samples_done: int) -> StreamPosition:
        """The same stream (same known-bad samples) at another place."""
        return replace(self, epoch=epoch, shards_done=shards_done, samples_done=samples_done,
                       bad=list(self.bad))  # fmt: skip

    def corrupt_samples(self) -> list[str]:
        """This stream's known-bad samples (a mixed stream's: its sources')."""
        return list(self.bad) + [b for d in self.parts for b in d.get("bad", [])]


@dataclass
class DataPosition:
    """One rank's data position; save it with the checkpoint (``to_dict``/``from_dict``)."""

    rank: int
    world_size: int
    workers: int  # streams per rank: max(1, data.workers)
    streams: list[StreamPosition] = field(default_factory=list)
    next_worker: int = 0  # the stream whose batch comes next
    batches: int = 0  # batches handed out

    @staticmethod
    def start(rank: int, world_size: int, workers: int) -> DataPosition:
        return DataPosition(rank, world_size, workers, [StreamPosition() for _ in range(workers)])

    @property
    def epoch(self) -> int:
        """The epoch every stream of this rank has reached."""
        return min(s.epoch for s in self.streams)

    def corrupt_samples(self) -> list[str]:
        """Every distinct corrupt sample this rank's streams skipped (``<url>#<key>``)."""
        return [b for s in self.streams for b in s.corrupt_samples()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> DataPosition:
        d = dict(d)
        d["streams"] = [StreamPosition(**s) for s in d["streams"]]  # "bad" absent before v0.2
        return DataPosition(**d)


# ---------------------------------------------------------------------------- sources

Emitted = tuple[str, int, dict[str, ModalityData], StreamPosition]  # key, epoch, sample, after


class SyntheticSource:
    """``n`` synthetic scenes of ``size`` px (``rsfm_core.synthetic``), scene seed from
    ``(seed, index)``; ``sensors``: modality name -> sensor registry name."""

    def __init__(
        self,
        n: int,
        size: int,
        sensors: Mapping[str, str],
        num_dates: int,
        seed: int,
        cache_mb: int,
    ) -> None:
        self.n, self.size, self.sensors = n, size, dict(sensors)
        self.num_dates, self.seed, self.cache_bytes = num_dates, seed, cache_mb * 2**20
        self._cache: OrderedDict[int, dict[str, ModalityData]] = OrderedDict()
        self._cached_bytes = 0

    def scene_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0] & 0x7FFFFFFF)

    def scene(self, index: int) -> dict[str, ModalityData]:
        """Modality name -> ModalityData of scene ``index`` (LRU-cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        from rsfm_core import synthetic

        s = synthetic.make_scene(
            self.size,
            sensors=tuple(dict.fromkeys(self.sensors.values())),
            seed=self.scene_seed(index),
            num_dates=self.num_dates,
        )
        out = {name: s.modalities[sensor] for name, sensor in self.sensors.items()}
        nbytes = sum(d.pixels.nbytes + d.valid.nbytes for d in out.values())
        if nbytes <= self.cache_bytes:
            self._cache[index] = out
            self._cached_bytes += nbytes
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(d.pixels.nbytes + d.valid.nbytes for d in old.values())
        return out

    def samples(
        self, stream: int, n_streams: int, start: StreamPosition, epochs: int | None
    ) -> Iterator[Emitted]:
        own = np.arange(stream, self.n, n_streams)
        if len(own) == 0:
            raise ValueError(
                f"data.synthetic_samples={self.n} is less than the {n_streams} streams "
                "(world_size x workers); raise it or use fewer workers"
            )
        pos = copy.copy(start)
        while epochs is None or pos.epoch < epochs:
            order = own[_rng(self.seed, "synthetic", pos.epoch, stream).permutation(len(own))]
            for j in range(pos.samples_done, len(order)):
                last = j + 1 == len(order)
                after = pos.moved(pos.epoch + last, 0, 0 if last else j + 1)
                yield f"synthetic-{int(order[j]):06d}", pos.epoch, self.scene(int(order[j])), after
            pos = pos.moved(pos.epoch + 1, 0, 0)


class ShardSource:
    """Samples of webdataset shards, shuffled within groups of ``group`` shards."""

    def __init__(
        self, shards: ShardList, seed: int, group: int, max_corrupt: int, buffer: int = 256
    ) -> None:
        self.urls, self.seed, self.group, self.max_corrupt = shards.urls, seed, group, max_corrupt
        self.buffer = buffer

    def epoch_shards(self, stream: int, n_streams: int, epoch: int) -> list[str]:
        perm = _rng(self.seed, "shards", epoch).permutation(len(self.urls))
        return [self.urls[i] for i in perm[stream::n_streams]]

    def _corrupt(self, pos: StreamPosition, stream: int, ident: str, what: str) -> None:
        """Remember one corrupt sample (once per identity); raise past the threshold."""
        if ident in pos.bad:
            return
        pos.bad.append(ident)
        pos.corrupt = len(pos.bad)
        log.warning("corrupt sample skipped (stream %d, %d so far): %s", stream, pos.corrupt, what)
        if pos.corrupt > self.max_corrupt:
            raise DataError(
                f"{pos.corrupt} distinct corrupt samples in data stream {stream} exceed "
                f"data.max_corrupt={self.max_corrupt}: {pos.bad}. Check the shards with "
                "`rsfm prepare --verify DIR`, rewrite them, or raise data.max_corrupt"
            )

    def _next(self, epoch: int, g: int, done: int, n_raws: int, n_shards: int) -> tuple[int, ...]:
        """(epoch, shards_done, samples_done) after ``done`` samples of group ``g``,
        normalised: a finished group is the start of the next one (or the next epoch)."""
        if done < n_raws:
            return epoch, g, done
        return (epoch, g + self.group, 0) if g + self.group < n_shards else (epoch + 1, 0, 0)

    def samples(
        self, stream: int, n_streams: int, start: StreamPosition, epochs: int | None
    ) -> Iterator[Emitted]:
        epoch, first, skip = start.epoch, start.shards_done, start.samples_done
        pos = start.moved(epoch, first, skip)  # carries the known-bad samples along
        while epochs is None or epoch < epochs:
            mine = self.epoch_shards(stream, n_streams, epoch)
            if not mine:
                raise ValueError(
                    f"{len(self.urls)} shards for {n_streams} streams (world_size x data.workers): "
                    f"stream {stream} gets none; write more, smaller shards (rsfm prepare "
                    "--samples-per-shard) or use fewer workers"
                )
            for g in range(first, len(mine), self.group):
                shards = ",".join(mine[g : g + self.group])
                errors: list[Exception] = []
                rng = _rng(self.seed, "shuffle", epoch, stream, g)
                emitted = _last_flag(
                    _shuffle_buffer(iter_shards(mine[g : g + self.group], errors), rng, self.buffer)
                )
                for j, (raw, last) in enumerate(emitted):
                    while errors:  # a known one (resumed or later epoch) is not counted again
                        e = errors.pop(0)
                        self._corrupt(pos, stream, f"{shards}#tar error: {e}", f"tar error {e}")
                    if j < skip:  # resuming inside this group: replayed, not decoded
                        continue
                    ident = f"{raw.get('__url__')}#{raw.get('__key__')}"
                    if ident in pos.bad:  # met before (an earlier epoch): skip quietly
                        continue
                    try:
                        sample = decode_sample(raw)
                    except CorruptSample as e:
                        self._corrupt(pos, stream, ident, f"{ident}: {e}")
                        continue
                    after = self._next(epoch, g, j + 1, j + 1 if last else j + 2, len(mine))
                    yield raw["__key__"], epoch, sample, pos.moved(*after)
                for e in errors:  # errors after the group's last sample
                    self._corrupt(pos, stream, f"{shards}#tar error: {e}", f"tar error {e}")
                skip = 0
            epoch, first = epoch + 1, 0


def _shuffle_buffer(raws: Iterator[dict], rng: np.random.Generator, size: int) -> Iterator[dict]:
    """``raws`` in a shuffled order, holding at most ``size`` samples: once the buffer is
    full each new sample replaces a randomly drawn one, which is emitted; the rest drain
    in random order at the end. Deterministic given the input order and ``rng`` (so a
    resumed stream replays a group's emission order exactly)."""
    buf: list[dict] = []
    for raw in raws:
        if len(buf) < size:
            buf.append(raw)
            continue
        i = int(rng.integers(len(buf)))
        out, buf[i] = buf[i], raw
        yield out
    for i in rng.permutation(len(buf)):
        yield buf[i]


def _last_flag(items: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
    """``(item, is_last)`` for each item (one item of look-ahead)."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


@dataclass
class MixedSource:
    """The sources of ``data.source: mixed``: ``parts`` [(source, ViewSpec)], ``weights``."""

    parts: list[tuple[Any, ViewSpec]]
    weights: list[float]
    names: list[str]


# ---------------------------------------------------------------------------- the stream


class _Streams(IterableDataset):
    """One rank's streams; each DataLoader worker runs one and yields whole batches as
    ``(stream index within the rank, position after the batch, ViewPair)``."""

    def __init__(
        self,
        source,
        spec: ViewSpec,
        batch: int,
        position: DataPosition,
        seed: int,
        epochs: int | None,
    ) -> None:
        super().__init__()
        self.source, self.spec, self.batch, self.position = source, spec, batch, position
        self.seed, self.epochs = seed, epochs

    def _collate(self, items: list[tuple[int, SampleViews]]) -> ViewPair:
        epoch, first = items[0]
        return collate_views(
            [v for _, v in items], self.spec, _rng(self.seed, "dropout", epoch, first.key)
        )

    def __iter__(self) -> Iterator[tuple[int, dict, ViewPair]]:
        info = get_worker_info()
        p = self.position
        local = ((info.id if info else 0) + p.next_worker) % p.workers
        stream, n_streams = p.rank * p.workers + local, p.world_size * p.workers
        items: list[tuple[int, SampleViews]] = []
        after = p.streams[local]
        for key, epoch, sample, after in self.source.samples(
            stream, n_streams, p.streams[local], self.epochs
        ):
            items.append(
                (epoch, make_views(sample, self.spec, _rng(self.seed, "views", epoch, key), key))
            )
            if len(items) == self.batch:
                yield local, asdict(after), self._collate(items)
                items = []
        if items:  # only when epochs= ends the stream
            yield local, asdict(after), self._collate(items)


class _MixedStreams(_Streams):
    """One rank's streams over several sources (``data.source: mixed``): each batch is
    drawn whole from one source, chosen with probability proportional to its weight."""

    def __init__(self, parts, weights, batch, position, seed, epochs) -> None:
        super().__init__(None, parts[0][1], batch, position, seed, epochs)
        self.parts = parts  # [(source, ViewSpec)]
        self.p = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))

    def _batch(self, it, spec: ViewSpec) -> tuple[list, StreamPosition | None]:
        """The next ``batch`` samples of one source's stream, and its position after them."""
        items, after = [], None
        while len(items) < self.batch:
            try:
                key, epoch, sample, after = next(it)
            except StopIteration:
                break
            rng = _rng(self.seed, "views", epoch, key)
            items.append((epoch, make_views(sample, spec, rng, key)))
        return items, after

    def __iter__(self) -> Iterator[tuple[int, dict, ViewPair]]:
        info = get_worker_info()
        p = self.position
        local = ((info.id if info else 0) + p.next_worker) % p.workers
        stream, n_streams = p.rank * p.workers + local, p.world_size * p.workers
        pos = copy.deepcopy(p.streams[local])
        starts = [StreamPosition(**d) for d in pos.parts] or [StreamPosition() for _ in self.parts]
        its = [
            src.samples(stream, n_streams, st, self.epochs)
            for (src, _), st in zip(self.parts, starts)
        ]
        while True:
            k = int(_rng(self.seed, "mix", stream, pos.batches).choice(len(self.parts), p=self.p))
            spec = self.parts[k][1]
            self.spec = spec
            items, after = self._batch(its[k], spec)
            if len(items) < self.batch:  # only when epochs= ends a source
                return
            starts[k] = after
            pos = StreamPosition(batches=pos.batches + 1, parts=[asdict(x) for x in starts])
            yield local, asdict(pos), self._collate(items)


def _identity(x: Any) -> Any:
    return x


@dataclass
class LoaderOptions:
    workers: int = 0  # DataLoader processes (data.workers); 0: in this process, one stream
    epochs: int | None = None  # stop each stream after this many epochs (None: endless)
    pin_memory: bool = False
    prefetch: int = 2  # batches prefetched per worker


class ViewPairLoader:
    """Iterable of :class:`ViewPair`; ``state()`` is the position after the last batch
    handed out. Iterating again continues from there (a fresh set of workers)."""

    def __init__(
        self,
        source: SyntheticSource | ShardSource,
        spec: ViewSpec,
        batch: int,
        position: DataPosition,
        seed: int,
        options: LoaderOptions,
    ) -> None:
        self.source, self.spec, self.batch, self.seed = source, spec, batch, seed
        self.options = options
        self._position = position

    def state(self) -> DataPosition:
        return copy.deepcopy(self._position)

    def __iter__(self) -> Iterator[ViewPair]:
        pos = self._position
        opts = self.options
        if isinstance(self.source, MixedSource):
            ds: _Streams = _MixedStreams(
                self.source.parts, self.source.weights, self.batch, copy.deepcopy(pos),
                self.seed, opts.epochs,
            )  # fmt: skip
        else:
            ds = _Streams(
                self.source, self.spec, self.batch, copy.deepcopy(pos), self.seed, opts.epochs
            )
        dl = DataLoader(
            ds,
            batch_size=None,
            num_workers=opts.workers,
            collate_fn=_identity,
            pin_memory=opts.pin_memory,
            prefetch_factor=opts.prefetch if opts.workers else None,
            persistent_workers=False,
        )
        for local, after, batch in dl:
            pos.streams[local] = StreamPosition(**after)
            pos.next_worker = (local + 1) % pos.workers
            pos.batches += 1
            yield batch


# ---------------------------------------------------------------------------- make_loader


def _modalities(
    cfg: PretrainConfig, patches: Mapping[str, int] | None
) -> dict[str, tuple[str, int]]:
    """Modality name -> (sensor, patch) for ``cfg.data.modalities`` from the model config."""
    from rsfm_core.model import get_config

    declared = get_config(cfg.model.name, **cfg.model.overrides).modalities
    missing = [m for m in cfg.data.modalities if m not in declared]
    if missing:
        raise ValueError(
            f"data.modalities {missing} are not modalities of model {cfg.model.name!r} "
            f"({list(declared)})"
        )
    patches = dict(patches or {})
    return {
        m: (declared[m].sensor, int(patches.get(m, declared[m].patch))) for m in cfg.data.modalities
    }


def _check_data(cfg: PretrainConfig) -> None:
    d = cfg.data
    checks = [
        (
            d.crop_size >= 1 and d.dates_per_view >= 1,
            "data.crop_size and data.dates_per_view must be >= 1",
        ),
        (0.0 < d.min_overlap <= 1.0, "data.min_overlap must be in (0, 1]"),
        (
            d.shuffle_shards >= 1 and d.max_corrupt >= 0 and d.shuffle_buffer >= 1,
            "data.shuffle_shards >= 1, data.shuffle_buffer >= 1 and data.max_corrupt >= 0",
        ),
        (
            d.workers >= 0 and d.synthetic_samples >= 1,
            "data.workers >= 0 and data.synthetic_samples >= 1",
        ),
        (bool(d.modalities), "data.modalities must name at least one modality"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def _view_spec(cfg: PretrainConfig, mods: Mapping[str, tuple[str, int]]) -> ViewSpec:
    # The finest modality has the largest patch (patch x pixel size is shared): crop_size
    # counts its pixels.
    finest = max(p for _, p in mods.values())
    if cfg.data.crop_size % finest:
        raise ValueError(
            f"data.crop_size={cfg.data.crop_size} is not a multiple of the token size "
            f"({finest} px of the finest modality); views must be whole tokens"
        )
    return ViewSpec(
        patches={m: p for m, (_, p) in mods.items()},
        crop_tokens=cfg.data.crop_size // finest,
        dates_per_view=cfg.data.dates_per_view,
        modality_dropout=cfg.data.modality_dropout,
        min_overlap=cfg.data.min_overlap,
        rotate_flip=cfg.data.rotate_flip,
        band_keep=cfg.data.band_keep,
        gain_jitter=cfg.data.gain_jitter,
    )


def _synthetic(
    cfg: PretrainConfig, mods: Mapping[str, tuple[str, int]], seed: int
) -> SyntheticSource:
    patches = {p for _, p in mods.values()}
    if len(patches) > 1:
        raise ValueError(
            f"synthetic scenes render every sensor on one 10 m grid; modalities {dict(mods)} need "
            "equal patches (use data.source=shards for mixed resolutions)"
        )
    size = cfg.data.synthetic_size or 2 * cfg.data.crop_size
    if size < cfg.data.crop_size or size % patches.pop():
        raise ValueError(f"data.synthetic_size={size} must be >= crop_size and whole tokens")
    return SyntheticSource(
        cfg.data.synthetic_samples,
        size,
        {m: s for m, (s, _) in mods.items()},
        num_dates=cfg.data.dates_per_view + 2,  # > dates_per_view: the views' dates can differ
        seed=seed,
        cache_mb=cfg.data.synthetic_cache_mb,
    )


def _check_streams(source: Any, streams: int) -> None:
    items = len(source.urls) if isinstance(source, ShardSource) else source.n
    if items < streams:
        what = "shards" if isinstance(source, ShardSource) else "data.synthetic_samples"
        raise ValueError(
            f"{items} {what} for {streams} streams (world_size x data.workers): every "
            "stream needs at least one; write more, smaller shards (rsfm prepare "
            "--samples-per-shard) or use fewer workers"
        )


def _mixed(cfg: PretrainConfig, mods: Mapping[str, tuple[str, int]], seed: int) -> MixedSource:
    """The sources of ``data.mix``, each with its own view spec (crop size, dates)."""
    parts, weights, names = [], [], []
    for i, e in enumerate(cfg.data.mix):
        data = cfg.data.model_copy(
            update={
                "crop_size": e.crop_size or cfg.data.crop_size,
                "dates_per_view": e.dates_per_view or cfg.data.dates_per_view,
            }
        )
        sub = cfg.model_copy(update={"data": data})
        spec = _view_spec(sub, mods)
        if e.source == "synthetic":
            src: Any = _synthetic(sub, mods, seed)
        else:
            # every source shuffles with its own key, so adding one leaves the others' order
            src = ShardSource(
                resolve_shards(e.shards), seed + 7919 * (i + 1), cfg.data.shuffle_shards,
                cfg.data.max_corrupt, cfg.data.shuffle_buffer,
            )  # fmt: skip
        parts.append((src, spec))
        weights.append(e.weight)
        names.append(e.shards or "synthetic")
    return MixedSource(parts, weights, names)


def _start_position(
    start: DataPosition | Mapping[str, Any] | None, rank: int, world_size: int, W: int
) -> DataPosition:
    if start is None:
        return DataPosition.start(rank, world_size, W)
    pos = DataPosition.from_dict(start) if isinstance(start, Mapping) else copy.deepcopy(start)
    if (pos.rank, pos.world_size, pos.workers) != (rank, world_size, W):
        raise ValueError(
            f"cannot resume: the position was saved by rank {pos.rank} of {pos.world_size} "
            f"with {pos.workers} workers, this is rank {rank} of {world_size} with {W}; "
            "resume with the same world size and data.workers"
        )
    return pos


def make_loader(
    cfg: PretrainConfig,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
    start: DataPosition | Mapping[str, Any] | None = None,
    *,
    patches: Mapping[str, int] | None = None,
    epochs: int | None = None,
    pin_memory: bool = False,
) -> ViewPairLoader:
    """The ViewPair stream of ``rank`` of ``world_size`` (micro-batches of
    ``cfg.deepspeed.micro_batch``), deterministic given ``(seed, rank, world_size,
    data.workers, start)``. ``seed``: default ``cfg.run.seed``; ``start``: a saved
    :class:`DataPosition` (or its dict) to resume from; ``patches``: modality -> patch
    overrides (default: the model config's); ``epochs``: stop each stream after that many
    epochs (default: endless)."""
    _check_data(cfg)
    seed = cfg.run.seed if seed is None else seed
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    mods = _modalities(cfg, patches)
    spec = _view_spec(cfg, mods)
    W = max(1, cfg.data.workers)
    position = _start_position(start, rank, world_size, W)
    if cfg.data.source == "synthetic":
        source: Any = _synthetic(cfg, mods, seed)
    elif cfg.data.source == "mixed":
        source = _mixed(cfg, mods, seed)
    else:
        source = ShardSource(
            resolve_shards(cfg.data.shards),
            seed,
            cfg.data.shuffle_shards,
            cfg.data.max_corrupt,
            cfg.data.shuffle_buffer,
        )
    for part in source.parts if isinstance(source, MixedSource) else [(source, spec)]:
        _check_streams(part[0], world_size * W)
    opts = LoaderOptions(workers=cfg.data.workers, epochs=epochs, pin_memory=pin_memory)
    loader = ViewPairLoader(source, spec, cfg.deepspeed.micro_batch, position, seed, opts)
    log.info(
        "data: %s, %s, views of %dx%d tokens (P=%d), %d dates, rank %d/%d, %d stream(s) per rank%s",
        cfg.data.source,
        ", ".join(f"{m}={s} patch {p}" for m, (s, p) in mods.items()),
        spec.crop_tokens,
        spec.crop_tokens,
        spec.pairs,
        spec.dates_per_view,
        rank,
        world_size,
        W,
        f", resuming at batch {position.batches}" if start is not None else "",
    )
    return loader
