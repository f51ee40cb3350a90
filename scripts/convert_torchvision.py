#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth) to safetensors, the PyTorch-side path.

    python scripts/convert_torchvision.py IN.pth OUT.safetensors [--strip-prefix P]

For users who prefer to convert with PyTorch itself rather than with
`frostgrad convert`. The two are meant to agree bit for bit (tests/pth.rs
checks this on the committed fixtures):
- the file is read with torch.load(weights_only=True), so nothing in it runs;
- a checkpoint whose top level is not all tensors is searched for a nested
  state_dict under 'state_dict', 'model' or 'model_state_dict';
- floating tensors become float32 (float16/bfloat16 exactly, float64 rounded
  to nearest), integer and bool tensors become int64;
- views and non-contiguous tensors are written as contiguous copies;
- the key order is kept in the metadata entry "order" (a JSON list), since
  safetensors itself sorts its entries.
"""

import argparse
import collections
import json
import sys

import torch
from safetensors.torch import save_file

NESTED_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


def _all_tensors(d):
    return isinstance(d, dict) and all(isinstance(v, torch.Tensor) for v in d.values())


def find_state_dict(obj):
    if _all_tensors(obj):
        return obj
    if isinstance(obj, dict):
        for key in NESTED_STATE_DICT_KEYS:
            if key in obj and _all_tensors(obj[key]):
                return obj[key]
    raise SystemExit(f"not a state_dict and no nested one under {NESTED_STATE_DICT_KEYS}")


def convert(path, strip_prefix=None):
    """The converted tensors, in the checkpoint's order."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    out = collections.OrderedDict()
    for name, tensor in find_state_dict(obj).items():
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix):]
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        elif not tensor.is_complex():  # integers and bool
            tensor = tensor.to(torch.int64)
        else:
            raise SystemExit(f"{name}: dtype {tensor.dtype} is not supported")
        # clone(): safetensors refuses tensors that share a storage.
        out[name] = tensor.contiguous().clone()
    return out


def save(tensors, out_path):
    save_file(dict(tensors), out_path, metadata={"order": json.dumps(list(tensors))})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--strip-prefix", default=None,
                        help="remove this prefix from every key that has it, e.g. 'module.'")
    args = parser.parse_args(argv)
    tensors = convert(args.input, args.strip_prefix)
    save(tensors, args.output)
    print(f"wrote {len(tensors)} tensors to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
