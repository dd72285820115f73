"""Physically plausible synthetic multi-sensor scenes: the demo's data and test fixtures.

    scene = rs.synthetic.make_scene(128, sensors=("sentinel2_l2a", "sentinel1_grd"), seed=1)
    manifest = rs.synthetic.write_scene(scene, "scene/")   # GeoTIFFs + labels + manifest.json

:mod:`.landcover` holds the physics (endmember spectra, class mixtures and phenology,
backscatter); :mod:`.scene` draws the maps, renders the sensors and writes the files.
Details and sources: docs/synthetic.md.
"""

from .scene import (
    Scene,
    SceneConfig,
    encode,
    file_encoding,
    generate,
    load_manifest,
    make_scene,
    smooth_noise,
    write_scene,
)

__all__ = [
    "Scene",
    "SceneConfig",
    "encode",
    "file_encoding",
    "generate",
    "load_manifest",
    "make_scene",
    "smooth_noise",
    "write_scene",
]
