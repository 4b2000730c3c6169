"""roost serving: an ONNX inference server speaking the Open Inference Protocol (KServe V2)."""

__version__ = "0.1.0"
