"""Running an in-memory ONNX graph in the tests that build one (the combined models)."""

from __future__ import annotations

import numpy as np
import onnx


def expression_of(model: onnx.ModelProto, tiles: np.ndarray) -> np.ndarray:
    """``model``'s ``expression`` output for uint8 ``tiles`` (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["expression"], {"image": tiles})[0]
