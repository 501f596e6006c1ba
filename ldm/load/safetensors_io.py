"""Minimal streaming reader and writer for the safetensors format.

A file is: 8 bytes little-endian header length N, N bytes of JSON header
(`{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the raw data.
Reading tensor by tensor with `readinto` straight into the destination buffer means a checkpoint is
never held twice in memory (no mmap pages to account for, no intermediate dict of the whole file);
writing streams the same way. Every structural problem becomes a one-line UserError.
"""
import json
import os
import struct

import torch

from ..errors import UserError
from ..files import atomic_path

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """The header of a safetensors file, validated, with lazy access to single tensors."""

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path} does not exist (or is not a file)")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise UserError(f"{self.path} is not a .safetensors file (bad header); convert .ckpt/.bin "
                                f"files to safetensors or download the .safetensors release")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise UserError(f"{self.path} is not a .safetensors file (header is not JSON)") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_offset = 8 + n
        self.tensors = header
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if self.data_offset + end > size:
            raise UserError(f"{self.path} is truncated ({size} bytes, the header promises "
                            f"{self.data_offset + end}): download it again")
        for key, t in header.items():
            if t.get("dtype") not in DTYPES:
                raise UserError(f"{self.path}: tensor {key} has unsupported dtype {t.get('dtype')}")

    def keys(self):
        return self.tensors.keys()

    def shape(self, key) -> tuple:
        return tuple(self.tensors[key]["shape"])

    def dtype(self, key) -> torch.dtype:
        return DTYPES[self.tensors[key]["dtype"]]

    def numel(self, key) -> int:
        n = 1
        for d in self.shape(key):
            n *= d
        return n

    def nbytes(self, key) -> int:
        begin, end = self.tensors[key]["data_offsets"]
        return end - begin

    def read(self, key, dtype=None, file=None, device="cpu") -> torch.Tensor:
        """One tensor, read straight into its own buffer and put on `device`, then cast to `dtype` there if
        it is floating point. For a CUDA device the buffer is pinned host memory and the copy does not
        wait: it runs while the next tensor is read, and the cast runs on the GPU."""
        begin, end = self.tensors[key]["data_offsets"]
        src = self.dtype(key)
        if end - begin != self.numel(key) * src.itemsize:
            raise UserError(f"{self.path}: tensor {key} has {end - begin} bytes for shape {self.shape(key)}: the file is corrupt")
        device = torch.device(device)
        buf = torch.empty(end - begin, dtype=torch.uint8, pin_memory=device.type == "cuda")
        f = file or open(self.path, "rb")
        try:
            f.seek(self.data_offset + begin)
            if end > begin and f.readinto(buf.numpy()) != end - begin:
                raise UserError(f"{self.path} is truncated: download it again")
        finally:
            if file is None:
                f.close()
        t = buf.view(src).reshape(self.shape(key)).to(device, non_blocking=True)
        return t.to(dtype) if dtype is not None and t.is_floating_point() and dtype != src else t

    def read_many(self, keys, dtype=None, device="cpu"):
        """Yield (key, tensor) for `keys`, in file order to read sequentially."""
        with open(self.path, "rb") as f:
            for key in sorted(keys, key=lambda k: self.tensors[k]["data_offsets"][0]):
                yield key, self.read(key, dtype, file=f, device=device)


def write(path, specs: dict, make, metadata: dict = None) -> None:
    """Stream a safetensors file: `specs` maps key -> (shape, dtype); `make(key)` returns that tensor.

    Tensors are made and written one at a time, so a full-size checkpoint needs little memory.
    """
    header, offset = {}, 0
    for key, (shape, dtype) in specs.items():
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        header[key] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key, (shape, dtype) in specs.items():
            t = make(key).to(dtype).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{key}: made shape {tuple(t.shape)}, declared {tuple(shape)}")
            f.write(t.reshape(-1).view(torch.uint8).numpy())
