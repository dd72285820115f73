"""Whole-encoder forward time: the spectral-embedding backend and frame skipping.

``python -m benchmarks.encoder_forward [--quick] [--json out.json]``

Cases (rsfm_tiny, S2 12 bands + S1, ``T`` dates, ``B`` samples, one ``torch.no_grad``
forward; CPU: float32; CUDA: bf16 autocast):

- spectral embedding ``torch`` (the default on CPU) vs ``reference`` (one conv2d per
  group), same inputs: what the loop-free backend buys for the whole encoder;
- frame skipping: with half of the frames fully invalid (missing dates), the eager CPU
  path gathers the valid frames out (one host read of the mask: free on a CPU), the
  sync-free path (GPU, ``torch.compile``) runs every frame masked and zeroes the empty
  ones. Forced here on the same device so the trade-off is measured, not assumed.
"""

from __future__ import annotations

import contextlib

import torch

from . import _common as C


def _batch(B: int, T: int, H: int, device, invalid_frames: bool):
    import rsfm_core as rs
    from rsfm_core.sample import ModalityData

    g = torch.Generator().manual_seed(0)
    valid = torch.rand(B, T, H, H, generator=g) > 0.1
    if invalid_frames:
        valid[:, T // 2 :] = False  # the later half of the dates is missing
    s2 = ModalityData(torch.rand(B, T, 12, H, H, generator=g) * 0.3, valid,
                      torch.arange(T).repeat(B, 1) * 15 + 18000, "sentinel2_l2a",
                      rs.sensors.get("sentinel2_l2a").band_names)  # fmt: skip
    s1 = ModalityData(torch.randn(B, T, 2, H, H, generator=g) * 3 - 15, valid.clone(),
                      torch.arange(T).repeat(B, 1) * 15 + 18001, "sentinel1_grd", ("VV", "VH"))  # fmt: skip
    return {"s2": s2.to(device), "s1": s1.to(device)}


def run(quick: bool, json_path: str | None) -> int:
    import rsfm_core as rs
    from rsfm_core.model.blocks import sync_free

    device = C.default_device()
    B, T, H = (2, 4, 32) if quick else (8, 4, 64)
    rows = []
    for embed in ("torch", "reference"):
        for invalid in (False, True):
            for skip in (True, False):
                if skip and device.type == "cuda":
                    continue  # frame skipping needs a host read: never on the GPU path
                if not invalid and not skip:
                    continue  # no empty frame: both paths are the same
                torch.manual_seed(0)
                model = rs.build_model("rsfm_tiny", embed_backend=embed).to(device).eval()
                batch = _batch(B, T, H, device, invalid)
                autocast = device.type == "cuda"

                def fwd(model=model, batch=batch, autocast=autocast, skip=skip):
                    mode = contextlib.nullcontext() if skip else sync_free()
                    with mode, torch.no_grad(), torch.autocast(device.type, enabled=autocast):
                        return model(batch)

                ms = C.time_ms(fwd, device, warmup=2, rep=5)
                rows.append({"embed": embed, "empty_frames": "half" if invalid else "none",
                             "frame_skipping": skip, "ms": ms,
                             "samples_per_s": B / (ms / 1e3)})  # fmt: skip
    C.print_table(rows, ["embed", "empty_frames", "frame_skipping", "ms", "samples_per_s"],
                  f"rsfm_tiny forward, B={B} T={T} {H}x{H} px, S2+S1, {C.device_name(device)}")  # fmt: skip
    if json_path:
        C.write_json(json_path, {"case": {"B": B, "T": T, "H": H}, "rows": rows}, device)
    return 0


def main() -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return run(args.quick, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
