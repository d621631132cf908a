"""Re-save a checkpoint as a variant: another output stride, fp16 weights, or another threshold.

Output stride changes only the encoder's last strides and dilations and doubles the ASPP rates
(6, 12, 18 -> 12, 24, 36), not the weights, so an OS 16 model runs at OS 8 as the DeepLabV3
paper evaluates it; ``footprints validate --model VARIANT`` then measures it.

Usage::

    .venv/bin/python scripts/checkpoint_variant.py SRC DST [--output-stride 8] [--half] [--threshold T]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipeline.model.checkpoint import at_output_stride, load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--output-stride", type=int, choices=(8, 16), default=None)
    parser.add_argument("--half", action="store_true", help="store the weights as fp16")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold to record")
    args = parser.parse_args()
    if args.dst.resolve() == args.src.resolve():
        raise SystemExit(f"{args.dst}: the variant must not overwrite its source; choose another path")
    loaded = load_checkpoint(args.src)
    model, spec = at_output_stride(loaded, args.output_stride or loaded.spec.output_stride)
    info = loaded.info
    if args.threshold is not None:
        info = dataclasses.replace(info, threshold=args.threshold)
    path = save_checkpoint(args.dst, model=model, spec=spec, metadata=info, half=args.half)
    print(f"{path}: OS {spec.output_stride}, threshold {info.threshold}, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
