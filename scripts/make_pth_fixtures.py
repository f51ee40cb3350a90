#!/usr/bin/env python3
"""Regenerate tests/fixtures/pth/: small checkpoints written by torch.save,
the tensors PyTorch loads from them, and hostile files.

    /opt/torchenv/bin/python scripts/make_pth_fixtures.py

For each good fixture X.pth the expected tensors are X.expected.safetensors,
written by scripts/convert_torchvision.py's own functions from
torch.load(weights_only=True) — so tests/pth.rs checking the Rust reader
against them bit for bit also checks that both conversion paths agree. One
fixture is additionally converted through the script's command line
(prefixed_zip.stripped.safetensors, with --strip-prefix module.).

Hostile files are either damaged copies of good ones or zips whose data.pkl
is pickled by hand (HandPickler below) with the same globals torch uses but
out-of-range offsets, sizes and strides.
"""

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_torchvision  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "pth")


def path(name):
    return os.path.join(OUT, name)


def small_state_dict(with_nbt=True):
    """A conv + bn + fc state_dict, shaped like a tiny ResNet stem."""
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    sd["conv1.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["bn1.weight"] = torch.rand(4, generator=g) + 0.5
    sd["bn1.bias"] = torch.randn(4, generator=g)
    sd["bn1.running_mean"] = torch.randn(4, generator=g)
    sd["bn1.running_var"] = torch.rand(4, generator=g) + 0.5
    if with_nbt:
        sd["bn1.num_batches_tracked"] = torch.tensor(123, dtype=torch.int64)
    sd["fc.weight"] = torch.randn(2, 4, generator=g)
    sd["fc.bias"] = torch.randn(2, generator=g)
    return sd


def with_float_dtype(sd, dtype):
    return collections.OrderedDict(
        (k, v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items())


def views_state_dict():
    """Views into one shared storage, non-contiguous strides, a Parameter."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, generator=g)
    sd = collections.OrderedDict()
    sd["shared.a"] = base[3:11].view(2, 4)            # offset 3
    sd["shared.b"] = base[20:30]                       # offset 20, same storage
    sd["shared.whole"] = base                          # the storage itself
    sd["transposed"] = torch.randn(3, 5, generator=g).t()        # stride (1, 5)
    sd["every_other_column"] = torch.randn(4, 6, generator=g)[:, ::2]  # stride (6, 2)
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride (1, 0)
    sd["permuted"] = torch.randn(2, 3, 4, generator=g).permute(2, 0, 1)
    sd["empty"] = torch.empty(0, 3)
    sd["scalar"] = torch.tensor(2.5)
    sd["parameter"] = torch.nn.Parameter(torch.randn(3, generator=g))
    sd["half_view"] = torch.randn(10, generator=g).half()[2:8:2]
    return sd


def ints_state_dict():
    sd = collections.OrderedDict()
    sd["int32"] = torch.tensor([-3, 0, 2**31 - 1], dtype=torch.int32)
    sd["int16"] = torch.tensor([-300, 7], dtype=torch.int16)
    sd["int8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["int64"] = torch.tensor([-(2**62), 2**62], dtype=torch.int64)
    return sd


def special_floats_state_dict():
    """Values whose conversion is easy to get wrong: inf, subnormals, -0."""
    sd = collections.OrderedDict()
    values = [0.0, -0.0, float("inf"), float("-inf"), 1e-8, 65504.0, 1.0 / 3.0, 1e-40, 3.4e38]
    sd["f64"] = torch.tensor(values, dtype=torch.float64)
    sd["f16"] = torch.tensor(values[:7], dtype=torch.float16)
    sd["bf16"] = torch.tensor(values, dtype=torch.bfloat16)
    return sd


def save_good(name, obj, legacy=False, to_buffer=False, strip=None):
    """torch.save `obj` as tests/fixtures/pth/<name>.pth and write the expected tensors."""
    p = path(name + ".pth")
    if to_buffer:
        # Saving to a buffer names the zip's root folder "archive", saving
        # to a path names it after the file: both must be read.
        buf = io.BytesIO()
        torch.save(obj, buf)
        with open(p, "wb") as f:
            f.write(buf.getvalue())
    else:
        torch.save(obj, p, _use_new_zipfile_serialization=not legacy)
    convert_torchvision.save(convert_torchvision.convert(p, strip), path(name + ".expected.safetensors"))
    return p


# --- hand-made pickles --------------------------------------------------------

class Storage:
    def __init__(self, key, numel, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class Rebuild:
    """Pickles exactly as a tensor does: _rebuild_tensor_v2(storage, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class HandPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def write_zip(name, data_pkl, storages, root="archive", compression=zipfile.ZIP_STORED):
    # A fixed timestamp, so regenerating leaves unchanged files unchanged.
    def entry(n):
        info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = compression
        return info

    with zipfile.ZipFile(path(name), "w", compression) as z:
        z.writestr(entry(f"{root}/data.pkl"), data_pkl)
        z.writestr(entry(f"{root}/byteorder"), b"little")
        for key, data in storages.items():
            z.writestr(entry(f"{root}/data/{key}"), data)
        z.writestr(entry(f"{root}/version"), b"3\n")


def hand_made(name, tensors, storages):
    buf = io.BytesIO()
    HandPickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    write_zip(name, buf.getvalue(), storages)


FOUR_FLOATS = torch.tensor([1.0, 2.0, 3.0, 4.0]).numpy().tobytes()


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(path(f))

    small = small_state_dict()
    save_good("small_zip", small)
    save_good("small_legacy", small, legacy=True)
    save_good("fp16_zip", with_float_dtype(small, torch.float16), to_buffer=True)
    save_good("fp16_legacy", with_float_dtype(small, torch.float16), legacy=True)
    save_good("bf16_zip", with_float_dtype(small, torch.bfloat16))
    save_good("f64_zip", with_float_dtype(small, torch.float64))
    save_good("views_zip", views_state_dict())
    save_good("views_legacy", views_state_dict(), legacy=True)
    save_good("ints_zip", ints_state_dict())
    save_good("special_floats_zip", special_floats_state_dict())
    save_good("legacy_no_num_batches_tracked", small_state_dict(with_nbt=False), legacy=True)
    prefixed = collections.OrderedDict(("module." + k, v) for k, v in small.items())
    p = save_good("prefixed_zip", prefixed)
    # The script's command line, as a user would run it.
    subprocess.run([sys.executable, os.path.join(HERE, "convert_torchvision.py"), p,
                    path("prefixed_zip.stripped.safetensors"), "--strip-prefix", "module."],
                   check=True)
    wrapped = {"epoch": 7, "best_acc": 0.91, "arch": "resnet18",
               "state_dict": collections.OrderedDict(("backbone." + k, v) for k, v in small.items())}
    save_good("wrapped_backbone_zip", wrapped)

    # A hand-made file that is valid, so the hostile ones below differ from a
    # loadable file only in the value they break.
    hand_made("handmade_ok.pth", {"x": Rebuild(Storage("0", 4), 1, (3,), (1,))}, {"0": FOUR_FLOATS})
    assert torch.load(path("handmade_ok.pth"), weights_only=True)["x"].tolist() == [2.0, 3.0, 4.0]

    # --- hostile files: each must be an Err naming the problem, never a panic.
    small_zip = open(path("small_zip.pth"), "rb").read()
    small_legacy = open(path("small_legacy.pth"), "rb").read()
    open(path("truncated_zip.pth"), "wb").write(small_zip[: len(small_zip) * 3 // 5])
    open(path("truncated_zip_tail.pth"), "wb").write(small_zip[:-30])
    open(path("truncated_legacy.pth"), "wb").write(small_legacy[:-10])
    # Cut inside the object pickle itself.
    open(path("truncated_legacy_pickle.pth"), "wb").write(small_legacy[:200])

    # A flipped byte inside a tensor's data: only the CRC notices.
    with zipfile.ZipFile(path("small_zip.pth")) as z:
        info = z.getinfo("small_zip/data/0")
    raw = bytearray(small_zip)
    local_extra = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    raw[info.header_offset + 30 + len(info.filename) + local_extra + 5] ^= 0x40
    open(path("bad_crc.pth"), "wb").write(bytes(raw))

    # The same archive re-packed with deflate.
    with zipfile.ZipFile(path("small_zip.pth")) as src:
        pkl = src.read("small_zip/data.pkl")
        data = {n.rsplit("/", 1)[1]: src.read(n) for n in src.namelist() if "/data/" in n}
    write_zip("compressed.pth", pkl, data, root="small_zip", compression=zipfile.ZIP_DEFLATED)

    # os.system in data.pkl (protocol 2: GLOBAL 'os system', a str, TUPLE1, REDUCE).
    write_zip("forbidden_global.pth",
              b"\x80\x02cos\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.", {})
    # A whole nn.Module, not its state_dict: its class is not on the allowlist.
    torch.save(torch.nn.Linear(2, 2), path("whole_module.pth"))

    hand_made("offset_out_of_range.pth", {"x": Rebuild(Storage("0", 4), 10, (2,), (1,))},
              {"0": FOUR_FLOATS})
    hand_made("size_past_storage.pth", {"x": Rebuild(Storage("0", 4), 0, (5,), (1,))},
              {"0": FOUR_FLOATS})
    hand_made("stride_past_storage.pth", {"x": Rebuild(Storage("0", 4), 0, (2, 2), (3, 1))},
              {"0": FOUR_FLOATS})
    hand_made("storage_shorter_than_declared.pth", {"x": Rebuild(Storage("0", 8), 0, (8,), (1,))},
              {"0": FOUR_FLOATS})
    hand_made("missing_storage.pth", {"x": Rebuild(Storage("7", 4), 0, (4,), (1,))},
              {"0": FOUR_FLOATS})
    hand_made("negative_stride.pth", {"x": Rebuild(Storage("0", 4), 3, (4,), (-1,))},
              {"0": FOUR_FLOATS})
    hand_made("size_overflow.pth", {"x": Rebuild(Storage("0", 4), 0, (2**62, 8), (0, 0))},
              {"0": FOUR_FLOATS})
    hand_made("huge_broadcast.pth", {"x": Rebuild(Storage("0", 4), 0, (2**20, 2**20), (0, 0))},
              {"0": FOUR_FLOATS})
    # One allowed-size broadcast view (2^24 elements) under 20 names: each is
    # fine alone, together they would expand a tiny file to 1.3 GB.
    big_view = Rebuild(Storage("0", 4), 0, (2**12, 2**12), (0, 0))
    hand_made("reused_broadcast.pth", {f"x{i}": big_view for i in range(20)}, {"0": FOUR_FLOATS})
    hand_made("complex_storage.pth",
              {"x": Rebuild(Storage("0", 2, torch.ComplexFloatStorage), 0, (2,), (1,))},
              {"0": FOUR_FLOATS})

    total = sum(os.path.getsize(path(f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
