"""Serving trained classifiers: streaming batch prediction, ONNX export, and Dask for scale-out.

- `predict_file(model_dir, data, out, PredictConfig(...))`: stream a stamp file of any size in
  chunks (bounded memory), write `id,p_real,label` rows to a CSV as they are computed, resume an
  interrupted run; engines `local` (this process) and `dask` (a LocalCluster or a scheduler);
  backends `torch` and `onnxruntime`.
- `export_onnx(model_dir, out_path)`: the network with its softmax as ONNX (dynamic batch),
  parity-checked against torch; Bayesian models as their posterior-mean network.
- `open_stamp_stream(path)`: chunked reads of HDF5 and `.npz` stamp files.

Preprocessing is not part of the ONNX graph: it runs in Python with the model's `Preprocessor`,
shared by every backend and engine.
"""

from hits_stamps.serve.backends import BACKENDS, OnnxBackend, TorchBackend, make_backend, predict_chunk
from hits_stamps.serve.export import PARITY_TOLERANCE, export_onnx, export_onnx_bytes
from hits_stamps.serve.predict import ENGINES, PredictConfig, PredictionSummary, predict_file
from hits_stamps.serve.stream import StampStream, open_stamp_stream

__all__ = [
    "BACKENDS",
    "ENGINES",
    "PARITY_TOLERANCE",
    "OnnxBackend",
    "PredictConfig",
    "PredictionSummary",
    "StampStream",
    "TorchBackend",
    "export_onnx",
    "export_onnx_bytes",
    "make_backend",
    "open_stamp_stream",
    "predict_chunk",
    "predict_file",
]
