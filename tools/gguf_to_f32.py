#!/usr/bin/env python3
"""Rewrites a GGUF model with every tensor dequantized to F32 (same metadata and tokenizer).

Usage: gguf_to_f32.py IN.gguf OUT.gguf
The replica benchmark's F32-base section serves an F32 base: there, merging an adapter costs no precision
or bandwidth (the merged matrices are F32 like the rest), so the merged mode is as fast as the base while
the unmerged mode pays the LoRA path — the trade-off dLoRA's paper measures on GPUs. Needs tools/requirements-bench.txt (gguf, numpy).
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def main():
    src, dst = sys.argv[1], sys.argv[2]
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"]
    arch_name = bytes(arch.parts[arch.data[0]]).decode()
    writer = GGUFWriter(dst, arch_name)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            etype = field.types[1]
            if etype == GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(name, values, vtype, sub_type=etype)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(name, bytes(field.parts[field.data[0]]).decode("utf-8", errors="surrogateescape"), vtype)
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type) if t.tensor_type not in (GGMLQuantizationType.F32,) else np.asarray(t.data)
        shape = [int(x) for x in reversed(t.shape.tolist())]  # GGUF stores dims fastest-first
        writer.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32).reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
