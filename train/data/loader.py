"""Pretraining data: a deterministic, resumable stream of :class:`ViewPair` micro-batches.

``make_loader(cfg, rank, world_size, seed, start)`` returns an iterable of ViewPairs
with ``.state() -> DataPosition`` for checkpoints. Samples come from webdataset shards
(``data.source: shards``, written by ``rsfm prepare``) or from synthetic scenes generated
on the fly (``data.source: synthetic``); views are cut by :mod:`rsfm_train.data.views`.

Streams: each rank runs ``W = max(1, data.workers)`` streams (one per DataLoader worker);
stream ``s = rank * W + worker`` of ``S = world_size * W`` streams reads a disjoint part of
the data and runs through epochs on its own, forever (training counts steps, not epochs;
``epochs=`` stops after that many, for evaluation and tests).

- Shards: in epoch e the shard list is permuted by ``(seed, e)`` and cut into global
  groups of ``data.shuffle_shards`` shards; group g is streamed through a shuffle buffer
  of ``data.shuffle_buffer`` samples (:func:`_shuffle_buffer`, draws seeded by
  ``(seed, e, g)``), so its samples and their order depend on ``(seed, e, g)`` only, not
  on the stream reading it. Stream s takes groups ``s, s + S, ...``. Memory is bounded by
  the buffer, not the shard size.
- Synthetic: sample i (scene seed derived from ``(seed, i)``) belongs to stream ``i % S``
  and each epoch visits that stream's samples in a permutation seeded by ``(seed, e, s)``.
  A stream keeps the scenes it made (up to ``data.synthetic_cache_mb``): after the first
  epoch, generation costs nothing. For elastic resume a group is one scene.
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

Elastic resume (:func:`elastic_position`; another world size or ``data.workers``):
``start`` is the list of EVERY rank's saved position. From them the loader computes,
epoch by epoch, the groups no old stream finished and how many samples of each partly
read one were handed out (a group replays its buffer deterministically, so the samples
still in a buffer are simply the rest of that group); these ``[epoch, group, done]``
are dealt round-robin to the new streams as their ``plan``, and after it every new
stream starts the next epoch on the new round-robin split. No sample of an interrupted
epoch is repeated or skipped (corrupt ones aside); what changes is the order and which
rank reads what. ``data.source: mixed``: each source's positions are re-split alone.

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
    "elastic_position",
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
    """Where one (rank, worker) stream is. First the ``plan`` (left by an elastic resume:
    ``[epoch, global group, samples of it done]`` entries, done in order); then, in epoch
    ``epoch``, the next sample is sample ``samples_done`` of the shuffled group that starts
    at shard ``shards_done`` of the stream's list (synthetic: sample ``samples_done`` of
    the stream's epoch order)."""

    epoch: int = 0
    shards_done: int = 0
    samples_done: int = 0
    corrupt: int = 0  # distinct corrupt samples met so far (= len(bad))
    batches: int = 0  # mixed only: batches this stream handed out
    parts: list[dict] = field(default_factory=list)  # mixed only: each source's position
    bad: list[str] = field(default_factory=list)  # the corrupt samples: "<url>#<key>"
    plan: list[list[int]] = field(default_factory=list)  # elastic: [epoch, group, done]

    def moved(
        self, epoch: int, shards_done: int, samples_done: int, plan: list[list[int]] | None = None
    ) -> StreamPosition:
        """The same stream (same known-bad samples) at another place."""
        return replace(self, epoch=epoch, shards_done=shards_done, samples_done=samples_done,
                       bad=list(self.bad), plan=[list(x) for x in plan or []])  # fmt: skip

    def corrupt_samples(self) -> list[str]:
        """This stream's known-bad samples (a mixed stream's: its sources')."""
        return list(self.bad) + [b for d in self.parts for b in d.get("bad", [])]


LAYOUT = 2  # 2: groups keyed by (seed, epoch, global group) (elastic); 1: per-stream groups


@dataclass
class DataPosition:
    """One rank's data position; save it with the checkpoint (``to_dict``/``from_dict``)."""

    rank: int
    world_size: int
    workers: int  # streams per rank: max(1, data.workers)
    streams: list[StreamPosition] = field(default_factory=list)
    next_worker: int = 0  # the stream whose batch comes next
    batches: int = 0  # batches handed out
    layout: int = LAYOUT  # how groups are formed (absent: 1, before elastic resume)
    groups: str = ""  # the group layout read (_groups_key): checked on resume

    @staticmethod
    def start(rank: int, world_size: int, workers: int) -> DataPosition:
        return DataPosition(rank, world_size, workers, [StreamPosition() for _ in range(workers)])

    @property
    def epoch(self) -> int:
        """The epoch every stream of this rank has reached."""
        return min(min([s.epoch] + [e for e, _, _ in s.plan]) for s in self.streams)

    def corrupt_samples(self) -> list[str]:
        """Every distinct corrupt sample this rank's streams skipped (``<url>#<key>``)."""
        return [b for s in self.streams for b in s.corrupt_samples()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> DataPosition:
        d = dict(d)
        d["streams"] = [StreamPosition(**s) for s in d["streams"]]  # "bad" absent before v0.2
        d.setdefault("layout", 1)
        return DataPosition(**d)


# ---------------------------------------------------------------------------- sources

Emitted = tuple[str, int, dict[str, ModalityData], StreamPosition]  # key, epoch, sample, after


class SyntheticSource:
    """``n`` synthetic scenes of ``size`` px (``rsfm_core.synthetic``), scene seed from
    ``(seed, index)``; ``sensors``: modality name -> sensor registry name. A group (the
    unit of elastic re-splitting) is one scene: group g is scene g."""

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

    @property
    def n_groups(self) -> int:
        return self.n

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

    def stream_groups(self, stream: int, n_streams: int, epoch: int) -> list[int]:
        """The groups (scenes) stream ``stream`` of ``n_streams`` visits in ``epoch``, in order."""
        own = np.arange(stream, self.n, n_streams)
        return [
            int(i) for i in own[_rng(self.seed, "synthetic", epoch, stream).permutation(len(own))]
        ]

    def progress(self, pos: StreamPosition) -> tuple[int, int]:
        """(groups of the stream's epoch list done, samples of the next group done)."""
        return pos.samples_done, 0

    def samples(
        self, stream: int, n_streams: int, start: StreamPosition, epochs: int | None
    ) -> Iterator[Emitted]:
        if self.n < n_streams:
            raise ValueError(
                f"data.synthetic_samples={self.n} is less than the {n_streams} streams "
                "(world_size x workers); raise it or use fewer workers"
            )
        for i, (e, g, _) in enumerate(start.plan):  # left by an elastic resume
            if epochs is None or e < epochs:
                after = start.moved(start.epoch, 0, start.samples_done, start.plan[i + 1 :])
                yield f"synthetic-{g:06d}", e, self.scene(g), after
        pos = start.moved(start.epoch, 0, start.samples_done)
        while epochs is None or pos.epoch < epochs:
            order = self.stream_groups(stream, n_streams, pos.epoch)
            for j in range(pos.samples_done, len(order)):
                last = j + 1 == len(order)
                after = pos.moved(pos.epoch + last, 0, 0 if last else j + 1)
                yield f"synthetic-{order[j]:06d}", pos.epoch, self.scene(order[j]), after
            pos = pos.moved(pos.epoch + 1, 0, 0)


class ShardSource:
    """Samples of webdataset shards, shuffled within groups of ``group`` shards. In epoch
    e, global group g is shards ``[g * group, (g + 1) * group)`` of the shard list permuted
    by ``(seed, e)``, shuffled by ``(seed, e, g)``: a group's samples and their order do
    not depend on the stream that reads it. Stream s of S reads groups s, s + S, ..."""

    def __init__(
        self, shards: ShardList, seed: int, group: int, max_corrupt: int, buffer: int = 256
    ) -> None:
        self.urls, self.seed, self.group, self.max_corrupt = shards.urls, seed, group, max_corrupt
        self.buffer = buffer

    @property
    def n_groups(self) -> int:
        return -(-len(self.urls) // self.group)

    def group_urls(self, epoch: int, g: int) -> list[str]:
        perm = _rng(self.seed, "shards", epoch).permutation(len(self.urls))
        return [self.urls[i] for i in perm[g * self.group : (g + 1) * self.group]]

    def stream_groups(self, stream: int, n_streams: int, epoch: int) -> list[int]:
        """The global groups stream ``stream`` of ``n_streams`` reads in ``epoch``, in order."""
        return list(range(stream, self.n_groups, n_streams))

    def progress(self, pos: StreamPosition) -> tuple[int, int]:
        """(groups of the stream's epoch list done, samples of the next group done)."""
        return pos.shards_done // self.group, pos.samples_done

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

    def _group(
        self, epoch: int, g: int, skip: int, stream: int, pos: StreamPosition
    ) -> Iterator[tuple[int, str, dict[str, ModalityData], bool]]:
        """``(j, key, sample, is_last)`` for the decodable samples of group ``g`` of
        ``epoch`` from emission ``skip`` on (the first ``skip`` are replayed through the
        buffer, not decoded); corrupt ones are recorded in ``pos``."""
        urls = self.group_urls(epoch, g)
        shards = ",".join(urls)
        errors: list[Exception] = []
        # keyed (epoch, 0, first shard g * group): (seed, epoch, g) only, and with ONE
        # stream the same draws as the layout-1 loader (its key: stream, shard offset)
        rng = _rng(self.seed, "shuffle", epoch, 0, g * self.group)
        emitted = _last_flag(_shuffle_buffer(iter_shards(urls, errors), rng, self.buffer))
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
            yield j, raw["__key__"], sample, last
        for e in errors:  # errors after the group's last sample
            self._corrupt(pos, stream, f"{shards}#tar error: {e}", f"tar error {e}")

    def samples(
        self, stream: int, n_streams: int, start: StreamPosition, epochs: int | None
    ) -> Iterator[Emitted]:
        if self.n_groups < n_streams:
            raise ValueError(
                f"{len(self.urls)} shards in {self.n_groups} groups of data.shuffle_shards="
                f"{self.group} for {n_streams} streams (world_size x data.workers): every "
                "stream needs a group; write more, smaller shards (rsfm prepare "
                "--samples-per-shard), lower data.shuffle_shards or use fewer workers"
            )
        pos = start.moved(start.epoch, start.shards_done, start.samples_done)  # keeps "bad"
        plan = [list(x) for x in start.plan]  # left by an elastic resume
        while plan:
            e, g, skip = plan[0]
            if epochs is None or e < epochs:
                for j, key, sample, last in self._group(e, g, skip, stream, pos):
                    rest = plan[1:] if last else [[e, g, j + 1]] + plan[1:]
                    yield key, e, sample, pos.moved(start.epoch, start.shards_done,
                                                    start.samples_done, rest)  # fmt: skip
            plan.pop(0)
        epoch, (first, skip) = start.epoch, self.progress(start)
        while epochs is None or epoch < epochs:
            mine = self.stream_groups(stream, n_streams, epoch)
            for k in range(first, len(mine)):
                for j, key, sample, last in self._group(epoch, mine[k], skip, stream, pos):
                    if not last:
                        after = (epoch, k * self.group, j + 1)
                    elif k + 1 < len(mine):
                        after = (epoch, (k + 1) * self.group, 0)
                    else:
                        after = (epoch + 1, 0, 0)
                    yield key, epoch, sample, pos.moved(*after)
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
    if isinstance(source, ShardSource):
        if source.n_groups < streams:
            raise ValueError(
                f"{len(source.urls)} shards in {source.n_groups} groups of data.shuffle_shards="
                f"{source.group} for {streams} streams (world_size x data.workers): every "
                "stream needs a group; write more, smaller shards (rsfm prepare "
                "--samples-per-shard), lower data.shuffle_shards or use fewer workers"
            )
    elif source.n < streams:
        raise ValueError(
            f"{source.n} data.synthetic_samples for {streams} streams (world_size x "
            "data.workers): every stream needs at least one; raise it or use fewer workers"
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


def _groups_key(source: Any) -> str:
    """What fixes the groups' content and order (not the shard contents themselves)."""
    if isinstance(source, ShardSource):
        return f"shards={len(source.urls)},shuffle_shards={source.group},buffer={source.buffer}"
    if isinstance(source, SyntheticSource):
        return f"synthetic_samples={source.n}"
    return "mixed: " + "; ".join(_groups_key(src) for src, _ in source.parts)


def _elastic_mixed(
    source: MixedSource, old: list[DataPosition], rank: int, world_size: int, W: int
) -> DataPosition:
    """``data.source: mixed``: each source's positions (the ``parts`` of every old
    stream) are re-split on their own, exactly as a single source's; the new streams
    start their batch count (which keys the choice of source per batch) at 0."""
    subs = []
    for k, (src, _) in enumerate(source.parts):
        per_rank = [
            DataPosition(
                p.rank,
                p.world_size,
                p.workers,
                [StreamPosition(**s.parts[k]) if s.parts else StreamPosition() for s in p.streams],
            )
            for p in old
        ]
        subs.append(elastic_position(src, per_rank, rank, world_size, W))
    streams = [StreamPosition(parts=[asdict(sub.streams[w]) for sub in subs]) for w in range(W)]
    return DataPosition(rank, world_size, W, streams, groups=_groups_key(source))


def _check_groups(saved: str, source: Any, elastic: bool) -> None:
    now = _groups_key(source)
    if not saved or saved == now:
        return
    msg = (
        f"the data position was saved reading {saved}; this run reads {now}: the shard "
        "groups differ (data.shards, data.shuffle_shards, data.shuffle_buffer or "
        "data.synthetic_samples changed)"
    )
    if elastic:
        raise ValueError(f"cannot resume elastically: {msg}; resume with the saved settings")
    log.warning("data: %s, so the rest of the current epoch is not exact", msg)


def _leftovers(source: Any, old: list[DataPosition]) -> tuple[dict[int, list[list[int]]], int]:
    """What the old streams left of their epochs: epoch -> ``[group, samples done]`` not
    yet (fully) read, and the first epoch no old stream started on."""
    n_old = old[0].world_size * old[0].workers
    streams = [(p.rank * p.workers + w, s) for p in old for w, s in enumerate(p.streams)]
    end = max(s.epoch for _, s in streams)
    left: dict[int, list[list[int]]] = {}
    for i, s in streams:
        for e, g, done in s.plan:  # a plan of an earlier elastic resume: all still to do
            left.setdefault(e, []).append([g, done])
        k, done = source.progress(s)
        for e in range(s.epoch, end + 1):
            mine = source.stream_groups(i, n_old, e)
            if e > s.epoch:
                k, done = 0, 0
            left.setdefault(e, []).extend([[g, done if n == 0 else 0] for n, g in
                                           enumerate(mine[k:])])  # fmt: skip
    return left, end + 1


def elastic_position(
    source: Any, old: list[DataPosition], rank: int, world_size: int, W: int
) -> DataPosition:
    """Rank ``rank``'s position for ``world_size`` ranks x ``W`` streams, from the
    positions of EVERY rank of a run with another world size or worker count.

    The groups (and the samples inside a partly read one) that the old streams had not
    read are dealt round-robin, epoch by epoch, to the new streams as their ``plan``;
    after it each new stream starts the next epoch on the round-robin group split of
    the new stream count. Every sample of the interrupted epochs is read exactly once
    (corrupt ones excepted), whatever the old and new stream counts."""
    ranks = sorted(p.rank for p in old)
    n_old = old[0].world_size
    if ranks != list(range(n_old)) or any(
        (p.world_size, p.workers, len(p.streams)) != (n_old, old[0].workers, old[0].workers)
        for p in old
    ):
        raise ValueError(
            f"cannot resume elastically: need the positions of all {n_old} ranks of one run "
            f"(got ranks {ranks}); the checkpoint is incomplete or mixed"
        )
    if any(p.layout != LAYOUT for p in old):
        raise ValueError(
            "cannot resume elastically: the data positions were written by a loader before "
            "elastic resume (layout 1); resume with the saved world size and data.workers"
        )
    old = sorted(old, key=lambda p: p.rank)
    for p in old:
        _check_groups(p.groups, source, elastic=True)
    if isinstance(source, MixedSource):
        return _elastic_mixed(source, old, rank, world_size, W)
    left, next_epoch = _leftovers(source, old)
    n_new = world_size * W
    plans: list[list[list[int]]] = [[] for _ in range(n_new)]
    t = 0
    for e in sorted(left):
        for g, done in sorted(left[e]):
            plans[t % n_new].append([e, g, done])
            t += 1
    bad = sorted({b for p in old for s in p.streams for b in s.bad})
    streams = [
        StreamPosition(
            epoch=next_epoch, corrupt=len(bad), bad=list(bad), plan=plans[rank * W + w]
        )  # fmt: skip
        for w in range(W)
    ]
    log.info(
        "data: elastic resume from %d ranks x %d workers to %d x %d: %d unread groups of "
        "epochs %s re-split, then epoch %d",
        n_old, old[0].workers, world_size, W, t, sorted(left), next_epoch,
    )  # fmt: skip
    return DataPosition(rank, world_size, W, streams, groups=_groups_key(source))


def _start_position(start: Any, source: Any, rank: int, world_size: int, W: int) -> DataPosition:
    if start is None:
        return replace(DataPosition.start(rank, world_size, W), groups=_groups_key(source))
    many = isinstance(start, (list, tuple))
    given = start if many else [start]
    pos = [DataPosition.from_dict(p) if isinstance(p, Mapping) else copy.deepcopy(p) for p in given]
    same = [p for p in pos if (p.rank, p.world_size, p.workers) == (rank, world_size, W)]
    if same:
        _check_groups(same[0].groups, source, elastic=False)
        same[0].groups = _groups_key(source)
        if same[0].layout != LAYOUT and world_size * W > 1:  # one stream: same groups
            log.warning(
                "data: the position was written by a loader before elastic resume (layout 1); "
                "the rest of its epoch is read with the new group layout, so samples of this "
                "epoch may repeat or be missed"
            )
        same[0].layout = LAYOUT  # what it writes from here on
        return same[0]
    if not many:
        p = pos[0]
        raise ValueError(
            f"cannot resume: the position was saved by rank {p.rank} of {p.world_size} "
            f"with {p.workers} workers, this is rank {rank} of {world_size} with {W}; resume "
            "with the same world size and data.workers, or pass every rank's position (a "
            "list, as the engine does) for an elastic resume"
        )
    return elastic_position(source, pos, rank, world_size, W)


def make_loader(
    cfg: PretrainConfig,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
    start: Any = None,
    *,
    patches: Mapping[str, int] | None = None,
    epochs: int | None = None,
    pin_memory: bool = False,
) -> ViewPairLoader:
    """The ViewPair stream of ``rank`` of ``world_size`` (micro-batches of
    ``cfg.deepspeed.micro_batch``), deterministic given ``(seed, rank, world_size,
    data.workers, start)``. ``seed``: default ``cfg.run.seed``; ``start``: a saved
    :class:`DataPosition` (or its dict) to resume from, or the list of EVERY rank's
    (needed when the world size or ``data.workers`` differs: elastic resume, see
    :func:`elastic_position`); ``patches``: modality -> patch
    overrides (default: the model config's); ``epochs``: stop each stream after that many
    epochs (default: endless)."""
    _check_data(cfg)
    seed = cfg.run.seed if seed is None else seed
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    mods = _modalities(cfg, patches)
    spec = _view_spec(cfg, mods)
    W = max(1, cfg.data.workers)
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
    position = _start_position(start, source, rank, world_size, W)
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
